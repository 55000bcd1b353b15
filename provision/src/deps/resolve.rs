//! Resolving requirements with uv (`uv pip compile`), from uv's cache first:
//! only when something is not cached (and the network is allowed) does a
//! second, online resolution run. Nothing is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::manifest::IndexOptions;
use crate::uv::Uv;

/// When resolution may use the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// From uv's cache only.
    Never,
    /// From the cache, and online for what is not cached.
    #[default]
    IfNeeded,
}

/// What a resolution found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resolution {
    /// Whether a set of versions satisfies everything.
    pub ok: bool,
    /// The versions chosen (normalized name -> version; URL requirements as their URL).
    pub pins: BTreeMap<String, String>,
    /// Whether the network was used (something was not in uv's cache).
    pub online: bool,
    /// Distributions uv's cache did not have (what provisioning downloads).
    pub not_cached: Vec<String>,
    /// Why it failed: uv's explanation.
    pub error: Option<String>,
}

/// What one resolution is given.
pub struct Input<'a> {
    /// Requirement lines.
    pub requirements: Vec<String>,
    /// Constraint lines (`torch==2.15.0` for a shared torch).
    pub constraints: Vec<String>,
    /// The interpreter to resolve for.
    pub python: &'a Path,
    /// Package index options.
    pub index: &'a IndexOptions,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

struct TempFile(PathBuf);

impl TempFile {
    fn with(lines: &[String], what: &str) -> std::io::Result<TempFile> {
        let p = std::env::temp_dir().join(format!(
            "nodecell-deps-{}-{}-{what}.txt",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut text = lines.join("\n");
        text.push('\n');
        let mut f = std::fs::File::create_new(&p)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        Ok(TempFile(p))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// uv's explanation of a failure: its `error:`/`cause:` lines, without hints.
fn explanation(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .map(|l| {
            l.trim_start_matches("error:")
                .trim_start_matches("cause:")
                .trim()
        })
        .filter(|l| !l.starts_with("No solution found"))
        .collect();
    if lines.is_empty() {
        stderr.trim().to_string()
    } else {
        lines.join(" ")
    }
}

/// Names uv could not find in its cache (from an offline failure): the
/// requirement before "was not found in the cache" / "need(s) to be
/// downloaded from a registry", or the specifiers of the "all of:" list
/// right before it.
fn uncached(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |spec: &str| {
        let name = spec
            .split(['=', '<', '>', '!', '~', '[', ',', ' '])
            .next()
            .unwrap_or("");
        let name = crate::requirement::normalize_name(name);
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !out.contains(&name)
        {
            out.push(name);
        }
    };
    let mut listed: Vec<String> = Vec::new();
    let mut in_list = false;
    for l in stderr.lines() {
        let t = l.trim();
        let hit = [
            "was not found in the cache",
            "needs to be downloaded",
            "need to be downloaded",
        ]
        .iter()
        .find_map(|m| t.find(m));
        if let Some(i) = hit {
            for spec in listed.drain(..) {
                push(&spec);
            }
            if let Some(word) = t[..i].trim_end().rsplit(char::is_whitespace).next() {
                push(word);
            }
            in_list = false;
            continue;
        }
        if t.ends_with("all of:") {
            in_list = true;
            listed.clear();
            continue;
        }
        if in_list {
            if t.contains(' ') {
                in_list = false;
                listed.clear();
            } else {
                listed.push(t.to_string());
            }
        }
    }
    out
}

/// Whether uv failed because it could not go online (something was not cached).
fn needed_network(stderr: &str) -> bool {
    stderr.contains("because the network was disabled")
        || stderr.contains("was not found in the cache")
        || stderr.contains("to be downloaded from a registry")
}

fn compile(uv: &Uv, input: &Input<'_>, offline: bool) -> Result<Resolution, String> {
    let reqs = TempFile::with(&input.requirements, "in").map_err(|e| e.to_string())?;
    let cons = TempFile::with(&input.constraints, "constraints").map_err(|e| e.to_string())?;
    let mut cmd = uv.command();
    cmd.arg("pip")
        .arg("compile")
        .arg(&reqs.0)
        .arg("--constraint")
        .arg(&cons.0)
        .arg("--python")
        .arg(input.python)
        .args(["--no-header", "--no-annotate", "--quiet"]);
    if offline {
        cmd.arg("--offline");
    }
    if let Some(u) = &input.index.index_url {
        cmd.arg("--default-index").arg(u);
    }
    for u in &input.index.extra_index_urls {
        cmd.arg("--index").arg(u);
    }
    for u in &input.index.find_links {
        cmd.arg("--find-links").arg(u);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", uv.path.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let mut not_cached = Vec::new();
        if offline && needed_network(&stderr) {
            not_cached = uncached(&stderr);
            if not_cached.is_empty() {
                not_cached.push("(a package uv named in its message)".into());
            }
        }
        return Ok(Resolution {
            ok: false,
            not_cached,
            error: Some(explanation(&stderr)),
            ..Resolution::default()
        });
    }
    let mut pins = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let l = l.split('#').next().unwrap_or("").trim();
        if l.is_empty() || l.starts_with('-') {
            continue;
        }
        if let Some((n, v)) = l.split_once("==") {
            pins.insert(
                crate::requirement::normalize_name(n.trim()),
                v.trim().to_string(),
            );
        } else if let Some((n, u)) = l.split_once(" @ ") {
            pins.insert(
                crate::requirement::normalize_name(n.trim()),
                u.trim().to_string(),
            );
        }
    }
    Ok(Resolution {
        ok: true,
        pins,
        ..Resolution::default()
    })
}

/// Resolve `input`: from uv's cache, then (when allowed and something was not
/// cached) online. `Err` only when uv could not be run at all.
pub fn resolve(uv: &Uv, input: &Input<'_>, network: Network) -> Result<Resolution, String> {
    let first = compile(uv, input, true)?;
    if first.ok || first.not_cached.is_empty() || network == Network::Never {
        return Ok(first);
    }
    let mut second = compile(uv, input, false)?;
    second.online = true;
    second.not_cached = first.not_cached;
    Ok(second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_messages() {
        let e = "error: No solution found when resolving dependencies\n  cause: Because some-pkg was not found in the cache and you require some-pkg==1.0, we can conclude that your requirements are unsatisfiable.\n\nhint: Packages were unavailable because the network was disabled.\n";
        assert_eq!(uncached(e), vec!["some-pkg"]);
        assert!(explanation(e).starts_with("Because some-pkg was not found"));
        let e2 = "  cause: Because colour-science==0.4.4 needs to be downloaded from a registry and you require colour-science==0.4.4, we can conclude that your requirements are unsatisfiable.";
        assert_eq!(uncached(e2), vec!["colour-science"]);
        let e3 = "  cause: Because you require numpy==1.26.4 and numpy>=2, we can conclude that your requirements are unsatisfiable.";
        assert!(uncached(e3).is_empty() && !needed_network(e3));
        let e4 = "error: No solution found when resolving dependencies\n  cause: Because all of:\n             attrs<=20.3.0\n             attrs>=21.2.0,<=21.4.0\n          need to be downloaded from a registry and only the following versions of attrs are available:\n             attrs<=20.3.0\n             attrs>=21.2.0\n         and you require attrs<22, we can conclude that your requirements are unsatisfiable.\n\nhint: Packages were unavailable because the network was disabled.";
        assert_eq!(uncached(e4), vec!["attrs"]);
        assert!(needed_network(e4));
        let e5 = "  cause: Because pillow<=11.3.0 needs to be downloaded from a registry and only the following versions of pillow are available:";
        assert_eq!(uncached(e5), vec!["pillow"]);
        assert_eq!(
            explanation(e3),
            "Because you require numpy==1.26.4 and numpy>=2, we can conclude that your requirements are unsatisfiable."
        );
    }
}
