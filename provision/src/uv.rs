//! Finding ([`Uv::find`], in `uv/find.rs`) and running uv.
//!
//! Every run gets `UV_PYTHON_DOWNLOADS=never`, an absolute interpreter path,
//! `--no-config` (index settings come from the manifest, or uv's `UV_*`
//! variables, which are part of the cache key) and no inherited
//! `VIRTUAL_ENV`/`CONDA_PREFIX`.

mod find;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

/// Environment variables that would point uv at another environment.
const UV_ENV_REMOVE: [&str; 8] = [
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "UV_PYTHON",
    "UV_SYSTEM_PYTHON",
    "UV_BREAK_SYSTEM_PACKAGES",
    "UV_PROJECT_ENVIRONMENT",
    "PYTHONHOME",
    "PYTHONPATH",
];

/// uv's index-related environment variables; their values enter the cache key.
pub const UV_INDEX_ENV: [&str; 8] = [
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_INDEX_STRATEGY",
    "UV_PRERELEASE",
    "UV_EXCLUDE_NEWER",
];

/// A uv executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uv {
    /// Its path.
    pub path: PathBuf,
}

impl Uv {
    /// A `uv` command with nodecell's fixed environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_PROGRESS", "1")
            .env("NO_COLOR", "1");
        for v in UV_ENV_REMOVE {
            c.env_remove(v);
        }
        c
    }
}

/// Runs `cmd`, calling `on_line` for each stderr line as it arrives.
/// Returns the exit status and the whole stderr text.
pub(crate) fn run_streaming(
    cmd: &mut Command,
    mut on_line: impl FnMut(&str),
) -> std::io::Result<(ExitStatus, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut all = String::new();
    if let Some(err) = child.stderr.take() {
        let mut reader = BufReader::new(err);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    on_line(line);
                    all.push_str(line);
                    all.push('\n');
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
    let status = child.wait()?;
    Ok((status, all))
}

/// What uv said about one `pip install`, parsed from its stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Progress {
    pub resolved: Option<usize>,
    pub prepared: Option<usize>,
    pub installed: Option<usize>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// One recognized line of uv's stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    Resolved(usize),
    Downloading(String, Option<String>),
    Prepared(usize),
    Installed(usize),
    Uninstalled(usize),
    Added(String),
    Removed(String),
    Other,
}

fn count_after(line: &str, word: &str) -> Option<usize> {
    let rest = line.strip_prefix(word)?.trim_start();
    let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let tail = rest[n.len()..].trim_start();
    if tail.starts_with("package") {
        n.parse().ok()
    } else {
        None
    }
}

/// Classifies one line of `uv pip install` stderr output.
pub(crate) fn parse_line(line: &str) -> Line {
    let t = line.trim_start();
    if let Some(n) = count_after(t, "Resolved") {
        return Line::Resolved(n);
    }
    if let Some(n) = count_after(t, "Prepared") {
        return Line::Prepared(n);
    }
    if let Some(n) = count_after(t, "Installed") {
        return Line::Installed(n);
    }
    if let Some(n) = count_after(t, "Uninstalled") {
        return Line::Uninstalled(n);
    }
    if let Some(rest) = t.strip_prefix("Downloading ") {
        let (name, size) = match rest.split_once(" (") {
            Some((n, s)) => (n.trim(), Some(s.trim_end_matches(')').to_string())),
            None => (rest.trim(), None),
        };
        return Line::Downloading(name.to_string(), size);
    }
    if let Some(rest) = line.strip_prefix(" + ") {
        return Line::Added(rest.trim().to_string());
    }
    if let Some(rest) = line.strip_prefix(" - ") {
        return Line::Removed(rest.trim().to_string());
    }
    Line::Other
}

impl Progress {
    pub(crate) fn update(&mut self, line: &Line) {
        match line {
            Line::Resolved(n) => self.resolved = Some(*n),
            Line::Prepared(n) => self.prepared = Some(*n),
            Line::Installed(n) => self.installed = Some(*n),
            Line::Added(p) => self.added.push(p.clone()),
            Line::Removed(p) => self.removed.push(p.clone()),
            Line::Downloading(..) | Line::Uninstalled(_) | Line::Other => {}
        }
    }
}

/// Shell-quotes a command for error messages.
pub(crate) fn display_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty()
            || a.contains(|c: char| c.is_whitespace() || "'\"$`\\;&|<>()*?[]{}!#~".contains(c))
        {
            parts.push(format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            parts.push(a.into_owned());
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uv_stderr_lines() {
        assert_eq!(
            parse_line("Resolved 30 packages in 216ms"),
            Line::Resolved(30)
        );
        assert_eq!(parse_line("Resolved 1 package in 5ms"), Line::Resolved(1));
        assert_eq!(
            parse_line("Downloading numpy (17.4MiB)"),
            Line::Downloading("numpy".into(), Some("17.4MiB".into()))
        );
        assert_eq!(parse_line("Prepared 2 packages in 85ms"), Line::Prepared(2));
        assert_eq!(
            parse_line("Installed 2 packages in 12ms"),
            Line::Installed(2)
        );
        assert_eq!(
            parse_line(" + sympy==1.13.3"),
            Line::Added("sympy==1.13.3".into())
        );
        assert_eq!(
            parse_line(" - sympy==1.14.0"),
            Line::Removed("sympy==1.14.0".into())
        );
        assert_eq!(
            parse_line("Using Python 3.11.2 environment at: v2"),
            Line::Other
        );
        assert_eq!(parse_line(" Downloaded numpy"), Line::Other);
    }
}
