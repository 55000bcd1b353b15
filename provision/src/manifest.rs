//! A node pack's manifest: what it needs (dependencies, interpreter, shared
//! torch) and how its sandbox is set (network, paths, limits).
//!
//! Read from the first of these in the pack's folder:
//!
//! 1. `manifest.yaml` (also `manifest.yml`): nodecell's own format.
//! 2. `pyisolate.yaml`: pyisolate's format (same keys; `name` defaults to the
//!    folder name; `share_cuda_ipc` is accepted and ignored).
//! 3. `pyproject.toml` with a `[tool.nodecell]` table (same keys; `name`
//!    and `dependencies` default to `[project]`'s).
//! 4. `pyproject.toml` with upstream ComfyUI's `[tool.comfy.isolation]`
//!    table: `[project]` gives `name`, `version` and `dependencies`;
//!    `can_isolate` (default true) gives `isolated`, `share_torch` and
//!    `extra_index_urls` are read; its other keys (`package_manager`,
//!    `execution_model`, ...) have no effect here.
//!
//! ```yaml
//! name: my_node_pack
//! version: 1.0.0
//! dependencies:
//!   - numpy==1.26.4
//!   - torch>=2.0.0,<3.0
//!   - git+https://github.com/org/repo.git@v1.0
//! isolated: true
//! share_torch: true
//! shared:                     # taken from the host's environment when its copy satisfies them
//!   - pillow>=10.3.0
//! python: "3.11"              # or an absolute interpreter path
//! index_url: https://pypi.org/simple      # optional; also extra_index_urls, find_links
//! sandbox:
//!   network: false
//!   writable_paths: [out]     # relative to the pack folder, or absolute
//!   readonly_paths: [/data/models]
//!   max_memory: 8GB           # KB/MB/GB/TB = 1000^n; K/M/G/T and KiB/MiB/GiB/TiB = 1024^n
//!   max_cpu_percent: 200      # percent of one CPU
//!   max_pids: 256
//!   timeout: 600              # seconds (or "30s", "10m", "1h")
//!   gpu: false
//! ```
//!
//! Every mistake is a [`ManifestError::Invalid`] naming the file, the field
//! (`dependencies[1]`, `sandbox.max_memory`), the line where the parser gives
//! one, and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::ManifestError;
use crate::requirement::Requirement;

/// Which file a manifest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestFormat {
    /// `manifest.yaml` / `manifest.yml`.
    Manifest,
    /// `pyisolate.yaml`.
    Pyisolate,
    /// `pyproject.toml`, `[tool.nodecell]`.
    Pyproject,
    /// `pyproject.toml`, upstream ComfyUI's `[tool.comfy.isolation]`.
    ComfyIsolation,
}

/// What a pack needs and how its sandbox is set.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The pack's name.
    pub name: String,
    /// The pack's own version, as written.
    pub version: Option<String>,
    /// Requirements to install into the pack's venv.
    pub dependencies: Vec<Requirement>,
    /// Whether the pack runs in its own sandboxed process (default true).
    pub isolated: bool,
    /// Whether the venv sees the host's torch instead of installing one.
    pub share_torch: bool,
    /// Distributions the venv takes from the host's environment (with their
    /// dependency closure, like torch with `share_torch`) instead of
    /// installing them; one whose host copy does not satisfy the
    /// requirement is installed into the venv as usual. Typically what the
    /// host app already provides (`nodecell migrate` writes them).
    pub shared: Vec<Requirement>,
    /// An interpreter path or version (`"3.11"`); `None` means the host's.
    pub python: Option<String>,
    /// Package index options passed to uv.
    pub index: IndexOptions,
    /// Sandbox settings.
    pub sandbox: SandboxSettings,
}

/// Package index options (part of the venv's cache key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IndexOptions {
    /// Replaces the default index (`--default-index`).
    pub index_url: Option<String>,
    /// Extra indexes (`--index`).
    pub extra_index_urls: Vec<String>,
    /// Extra places to look for distributions (`--find-links`).
    pub find_links: Vec<String>,
}

/// The manifest's `sandbox:` section, defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SandboxSettings {
    /// Whether the sandbox keeps network access (default false).
    pub network: bool,
    /// Paths bound writable (relative ones are relative to the pack folder).
    pub writable_paths: Vec<PathBuf>,
    /// Extra paths bound read-only.
    pub readonly_paths: Vec<PathBuf>,
    /// Memory limit in bytes.
    pub max_memory: Option<u64>,
    /// CPU limit, percent of one CPU.
    pub max_cpu_percent: Option<f64>,
    /// Limit on processes and threads.
    pub max_pids: Option<u64>,
    /// Wall-clock limit.
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Option<Duration>,
    /// Whether the sandbox may use the GPU (default false).
    pub gpu: bool,
}

fn ser_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

// ---- raw (as written) model ------------------------------------------------

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of manifest fields (name, version, dependencies, isolated, share_torch, shared, python, index_url, extra_index_urls, find_links, sandbox)"
)]
struct RawManifest {
    name: Option<NonEmpty>,
    version: Option<Loose>,
    dependencies: Option<Vec<Requirement>>,
    isolated: Option<bool>,
    share_torch: Option<bool>,
    shared: Option<Vec<Requirement>>,
    /// pyisolate's key; CUDA memory crosses as fds in nodecell, so it has no effect.
    #[allow(dead_code)]
    share_cuda_ipc: Option<bool>,
    python: Option<PythonSpec>,
    index_url: Option<IndexUrl>,
    extra_index_urls: Option<Vec<IndexUrl>>,
    find_links: Option<Vec<NonEmpty>>,
    sandbox: Option<RawSandbox>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of sandbox settings (network, writable_paths, readonly_paths, max_memory, max_cpu_percent, max_pids, timeout, gpu)"
)]
struct RawSandbox {
    network: Option<bool>,
    writable_paths: Option<Vec<NonEmpty>>,
    readonly_paths: Option<Vec<NonEmpty>>,
    max_memory: Option<ByteSize>,
    max_cpu_percent: Option<Percent>,
    max_pids: Option<Pids>,
    timeout: Option<Seconds>,
    gpu: Option<bool>,
}

#[derive(Deserialize)]
struct Pyproject {
    project: Option<PyprojectProject>,
    tool: Option<PyprojectTool>,
}

#[derive(Deserialize)]
struct PyprojectProject {
    name: Option<String>,
    dependencies: Option<Vec<Requirement>>,
}

#[derive(Deserialize)]
struct PyprojectTool {
    nodecell: Option<RawManifest>,
}

/// A non-empty string without control characters.
struct NonEmpty(String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-empty string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NonEmpty, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("empty string: expected a non-empty string"));
                }
                if v.chars().any(char::is_control) {
                    return Err(E::custom(format!(
                        "{v:?} contains a control character: expected printable text"
                    )));
                }
                Ok(NonEmpty(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string, also accepting a number (YAML reads `version: 1.0` as a float).
struct Loose(String);

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a version string such as \"1.0.0\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Loose, E> {
                Ok(Loose(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Loose, E> {
                Ok(Loose(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `python:`: a string (a number would lose `3.10` to `3.1`).
struct PythonSpec(String);

impl<'de> Deserialize<'de> for PythonSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PythonSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an interpreter path or a quoted version such as \"3.11\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PythonSpec, E> {
                let v = v.trim();
                let is_version = !v.is_empty()
                    && v.split('.')
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
                if v.starts_with('/') || is_version || v.starts_with("python") {
                    Ok(PythonSpec(v.to_string()))
                } else {
                    Err(E::custom(format!(
                        "{v:?}: expected an absolute interpreter path (such as /usr/bin/python3.11) or a version (such as \"3.11\")"
                    )))
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PythonSpec, E> {
                Err(E::custom(format!(
                    "the number {v}: expected a quoted version such as \"3.11\" (YAML reads 3.10 as the number 3.1)"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PythonSpec, E> {
                Err(E::custom(format!(
                    "the number {v}: expected a quoted version such as \"3.11\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PythonSpec, E> {
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

/// An index URL: `http(s)://...` or `file://...`.
struct IndexUrl(String);

impl<'de> Deserialize<'de> for IndexUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IndexUrl;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an index URL starting with https://, http:// or file://")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<IndexUrl, E> {
                let t = s.trim();
                let ok = ["http://", "https://", "file://"]
                    .iter()
                    .any(|p| t.len() > p.len() && t.starts_with(p))
                    && !t.contains(char::is_whitespace);
                if ok {
                    Ok(IndexUrl(t.to_string()))
                } else {
                    Err(E::custom(format!(
                        "{s:?}: expected an index URL starting with https://, http:// or file://"
                    )))
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses a size: `8GB`, `512MiB`, `1.5G`, `1024` (bytes), by nodecell's one
/// size table ([`nodecell_units::parse_size`]).
pub fn parse_size(s: &str) -> Result<u64, String> {
    nodecell_units::parse_size(s).map_err(|e| e.to_string())
}

struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"8GB\", \"512MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                if v == 0 {
                    return Err(E::custom("0: expected a size greater than 0"));
                }
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                if v <= 0 {
                    return Err(E::custom(format!("{v}: expected a size greater than 0")));
                }
                Ok(ByteSize(v as u64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "{v}: expected a whole number of bytes or a size with a unit such as \"8GB\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A positive finite number.
fn positive<E: de::Error>(v: f64, what: &str) -> Result<f64, E> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(E::custom(format!("{v}: expected {what}")))
    }
}

struct Percent(f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WHAT: &str =
            "a percentage of one CPU greater than 0 (such as 50, or 200 for two CPUs)";
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WHAT)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                positive(v, WHAT).map(Percent)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                match v.trim().trim_end_matches('%').trim().parse::<f64>() {
                    Ok(n) => self.visit_f64(n),
                    Err(_) => Err(E::custom(format!("{v:?}: expected {WHAT}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

struct Pids(u64);

impl<'de> Deserialize<'de> for Pids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WHAT: &str = "a whole number of processes, at least 1";
        struct V;
        impl Visitor<'_> for V {
            type Value = Pids;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WHAT)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Pids, E> {
                if v == 0 {
                    return Err(E::custom(format!("0: expected {WHAT}")));
                }
                Ok(Pids(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Pids, E> {
                if v <= 0 {
                    return Err(E::custom(format!("{v}: expected {WHAT}")));
                }
                Ok(Pids(v as u64))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a duration: a number of seconds, or `30s`, `10m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected =
        "expected a number of seconds (such as 600) or a duration such as \"30s\", \"10m\", \"1h\"";
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.trim() {
        "" | "s" | "sec" | "secs" | "seconds" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        _ => return Err(format!("{s:?}: {expected}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: {expected}"))?;
    let secs = n * mult;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e12 {
        return Err(format!("{s:?}: expected a duration greater than 0"));
    }
    Ok(Duration::from_secs_f64(secs))
}

struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WHAT: &str =
            "a number of seconds greater than 0 (such as 600) or a duration such as \"10m\"";
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WHAT)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                let v = positive(v, WHAT)?;
                if v > 1e12 {
                    return Err(E::custom(format!("{v}: expected {WHAT}")));
                }
                Ok(Seconds(Duration::from_secs_f64(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                parse_duration(v).map(Seconds).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// ---- loading ---------------------------------------------------------------

/// A node pack: its folder and its manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Pack {
    /// The pack's folder (absolute).
    pub dir: PathBuf,
    /// The manifest file read.
    pub manifest_path: PathBuf,
    /// Which kind of file it was.
    pub format: ManifestFormat,
    /// The manifest.
    pub manifest: Manifest,
}

impl Pack {
    /// Loads the pack in `dir`: the first of `manifest.yaml`, `manifest.yml`,
    /// `pyisolate.yaml`, `pyproject.toml` (with `[tool.nodecell]`, else with
    /// `[tool.comfy.isolation]`).
    pub fn load(dir: &Path) -> Result<Pack, ManifestError> {
        let dir = absolute(dir);
        let candidates = [
            ("manifest.yaml", ManifestFormat::Manifest),
            ("manifest.yml", ManifestFormat::Manifest),
            ("pyisolate.yaml", ManifestFormat::Pyisolate),
            ("pyproject.toml", ManifestFormat::Pyproject),
        ];
        let mut tried = Vec::new();
        for (file, format) in candidates {
            let path = dir.join(file);
            let text = match std::fs::read(&path) {
                Ok(bytes) => String::from_utf8(bytes).map_err(|_| ManifestError::Invalid {
                    path: path.clone(),
                    line: None,
                    column: None,
                    field: String::new(),
                    message: "not UTF-8 text: expected a UTF-8 encoded file".into(),
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tried.push(path);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                    return Err(ManifestError::NotFound {
                        dir,
                        tried: vec![path],
                    });
                }
                Err(source) => return Err(ManifestError::Read { path, source }),
            };
            let format = if format == ManifestFormat::Pyproject && !has_nodecell_table(&text) {
                if !has_comfy_isolation(&text) {
                    tried.push(dir.join("pyproject.toml [tool.nodecell]"));
                    tried.push(dir.join("pyproject.toml [tool.comfy.isolation]"));
                    continue;
                }
                ManifestFormat::ComfyIsolation
            } else {
                format
            };
            let manifest = parse_manifest(&path, &text, format, &dir)?;
            return Ok(Pack {
                dir,
                manifest_path: path,
                format,
                manifest,
            });
        }
        Err(ManifestError::NotFound { dir, tried })
    }
}

fn absolute(p: &Path) -> PathBuf {
    match std::fs::canonicalize(p) {
        Ok(c) => c,
        Err(_) if p.is_absolute() => p.to_path_buf(),
        Err(_) => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf()),
    }
}

fn has_comfy_isolation(text: &str) -> bool {
    match text.parse::<toml::Table>() {
        Ok(t) => t
            .get("tool")
            .and_then(|t| t.get("comfy"))
            .and_then(|c| c.get("isolation"))
            .is_some(),
        Err(_) => text.contains("[tool.comfy.isolation"),
    }
}

/// Upstream ComfyUI's opt-in (`[tool.comfy.isolation]`) read as a manifest.
fn parse_comfy_isolation(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let invalid = |field: &str, message: String| ManifestError::Invalid {
        path: path.to_path_buf(),
        line: None,
        column: None,
        field: field.to_string(),
        message,
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => return Err(toml_error(path, text, String::new(), e)),
    };
    let project = table.get("project").and_then(|p| p.as_table());
    let iso = table
        .get("tool")
        .and_then(|t| t.get("comfy"))
        .and_then(|c| c.get("isolation"))
        .and_then(|i| i.as_table())
        .ok_or_else(|| invalid("tool.comfy.isolation", "expected a table".into()))?;
    let name = match project.and_then(|p| p.get("name")) {
        Some(toml::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            return Err(invalid(
                "project.name",
                "missing: expected the pack's name (a string) in [project]".into(),
            ))
        }
    };
    let version = match project.and_then(|p| p.get("version")) {
        Some(toml::Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let mut dependencies = Vec::new();
    if let Some(v) = project.and_then(|p| p.get("dependencies")) {
        let items = v.as_array().ok_or_else(|| {
            invalid(
                "project.dependencies",
                "expected an array of requirement strings".into(),
            )
        })?;
        for (i, item) in items.iter().enumerate() {
            let field = format!("project.dependencies[{i}]");
            let s = item
                .as_str()
                .ok_or_else(|| invalid(&field, "expected a requirement string".into()))?;
            dependencies.push(Requirement::parse(s).map_err(|e| invalid(&field, e))?);
        }
    }
    let flag = |key: &str, default: bool| match iso.get(key) {
        None => Ok(default),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(invalid(
            &format!("tool.comfy.isolation.{key}"),
            "expected true or false".into(),
        )),
    };
    let mut extra_index_urls = Vec::new();
    if let Some(v) = iso.get("extra_index_urls") {
        let items = v.as_array().ok_or_else(|| {
            invalid(
                "tool.comfy.isolation.extra_index_urls",
                "expected an array of URLs".into(),
            )
        })?;
        for (i, u) in items.iter().enumerate() {
            let s = u.as_str().ok_or_else(|| {
                invalid(
                    &format!("tool.comfy.isolation.extra_index_urls[{i}]"),
                    "expected a URL string".into(),
                )
            })?;
            extra_index_urls.push(s.to_string());
        }
    }
    Ok(Manifest {
        name,
        version,
        dependencies,
        isolated: flag("can_isolate", true)?,
        share_torch: flag("share_torch", false)?,
        shared: Vec::new(),
        python: None,
        index: IndexOptions {
            extra_index_urls,
            ..IndexOptions::default()
        },
        sandbox: SandboxSettings::default(),
    })
}

fn has_nodecell_table(text: &str) -> bool {
    // A cheap pre-check; the real parse below reports any syntax error.
    match text.parse::<toml::Table>() {
        Ok(t) => t.get("tool").and_then(|t| t.get("nodecell")).is_some(),
        Err(_) => text.contains("[tool.nodecell"),
    }
}

/// Parses manifest text. `path` is only used in errors; `dir` supplies the
/// default name for `pyisolate.yaml` (the folder's name).
pub fn parse_manifest(
    path: &Path,
    text: &str,
    format: ManifestFormat,
    dir: &Path,
) -> Result<Manifest, ManifestError> {
    let invalid = |line, column, field: &str, message: String| ManifestError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        field: field.to_string(),
        message,
    };
    let (raw, project) = match format {
        ManifestFormat::ComfyIsolation => return parse_comfy_isolation(path, text),
        ManifestFormat::Manifest | ManifestFormat::Pyisolate => {
            if text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                if format == ManifestFormat::Manifest {
                    return Err(invalid(
                        None,
                        None,
                        "",
                        "the file is empty: expected a mapping with at least `name`".into(),
                    ));
                }
                (None, None)
            } else {
                let de = serde_norway::Deserializer::from_str(text);
                match serde_path_to_error::deserialize::<_, RawManifest>(de) {
                    Ok(r) => (Some(r), None),
                    Err(e) => return Err(yaml_error(path, e)),
                }
            }
        }
        ManifestFormat::Pyproject => {
            let de = match toml::Deserializer::parse(text) {
                Ok(de) => de,
                Err(e) => return Err(toml_error(path, text, String::new(), e)),
            };
            match serde_path_to_error::deserialize::<_, Pyproject>(de) {
                Ok(p) => (p.tool.and_then(|t| t.nodecell), p.project),
                Err(e) => {
                    let field = e.path().to_string();
                    return Err(toml_error(path, text, field, e.into_inner()));
                }
            }
        }
    };
    let raw = raw.unwrap_or(RawManifest {
        name: None,
        version: None,
        dependencies: None,
        isolated: None,
        share_torch: None,
        shared: None,
        share_cuda_ipc: None,
        python: None,
        index_url: None,
        extra_index_urls: None,
        find_links: None,
        sandbox: None,
    });
    let (project_name, project_deps) = match project {
        Some(p) => (p.name, p.dependencies),
        None => (None, None),
    };
    let name = match (raw.name, format) {
        (Some(n), _) => n.0,
        (None, ManifestFormat::Manifest) => {
            return Err(invalid(
                None,
                None,
                "name",
                "missing: expected the pack's name (a string)".into(),
            ))
        }
        (None, ManifestFormat::Pyproject | ManifestFormat::ComfyIsolation) => match project_name {
            Some(n) if !n.trim().is_empty() => n,
            _ => {
                return Err(invalid(
                    None,
                    None,
                    "tool.nodecell.name",
                    "missing (and [project] has no name): expected the pack's name (a string)"
                        .into(),
                ))
            }
        },
        (None, ManifestFormat::Pyisolate) => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                invalid(
                    None,
                    None,
                    "name",
                    "missing, and the folder has no name: expected a `name:`".into(),
                )
            })?,
    };
    let dependencies = match raw.dependencies {
        Some(d) => d,
        None => project_deps.unwrap_or_default(),
    };
    let sandbox = match raw.sandbox {
        None => SandboxSettings::default(),
        Some(s) => SandboxSettings {
            network: s.network.unwrap_or(false),
            writable_paths: s
                .writable_paths
                .unwrap_or_default()
                .into_iter()
                .map(|p| PathBuf::from(p.0))
                .collect(),
            readonly_paths: s
                .readonly_paths
                .unwrap_or_default()
                .into_iter()
                .map(|p| PathBuf::from(p.0))
                .collect(),
            max_memory: s.max_memory.map(|b| b.0),
            max_cpu_percent: s.max_cpu_percent.map(|p| p.0),
            max_pids: s.max_pids.map(|p| p.0),
            timeout: s.timeout.map(|t| t.0),
            gpu: s.gpu.unwrap_or(false),
        },
    };
    Ok(Manifest {
        name,
        version: raw.version.map(|v| v.0),
        dependencies,
        isolated: raw.isolated.unwrap_or(true),
        share_torch: raw.share_torch.unwrap_or(false),
        shared: raw.shared.unwrap_or_default(),
        python: raw.python.map(|p| p.0),
        index: IndexOptions {
            index_url: raw.index_url.map(|u| u.0),
            extra_index_urls: raw
                .extra_index_urls
                .unwrap_or_default()
                .into_iter()
                .map(|u| u.0)
                .collect(),
            find_links: raw
                .find_links
                .unwrap_or_default()
                .into_iter()
                .map(|u| u.0)
                .collect(),
        },
        sandbox,
    })
}

/// Adds what was expected to serde messages that do not say it.
fn with_expected(message: String, syntax: &str) -> String {
    if message.contains("expected") {
        return message;
    }
    if message.starts_with("duplicate field") {
        return format!("{message}: expected each field once");
    }
    if message.starts_with("missing field") {
        return format!("{message}: expected it to be set");
    }
    format!(
        "{message}: expected valid {syntax} (check indentation, quoting and `key: value` pairs)"
    )
}

fn yaml_error(path: &Path, e: serde_path_to_error::Error<serde_norway::Error>) -> ManifestError {
    let field = match e.path().to_string().as_str() {
        "." | "?" => String::new(),
        p => p.to_string(),
    };
    let inner = e.into_inner();
    let (line, column) = match inner.location() {
        Some(l) => (Some(l.line()), Some(l.column())),
        None => (None, None),
    };
    let mut message = inner.to_string();
    // serde_norway appends " at line L column C" and prefixes its own path.
    if let Some(i) = message.rfind(" at line ") {
        if message[i + 9..]
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c.is_ascii_alphabetic())
        {
            message.truncate(i);
        }
    }
    if let Some((head, rest)) = message.split_once(": ") {
        // `dependencies[1]` -> `dependencies`, to compare paths however serde_norway wrote them.
        let plain = |f: &str| -> String {
            let mut s = String::new();
            let mut depth = 0;
            for c in f.chars() {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    _ if depth == 0 => s.push(c),
                    _ => {}
                }
            }
            s
        };
        if !head.is_empty() && !head.contains(' ') && plain(&field).starts_with(&plain(head)) {
            message = rest.to_string();
        }
    }
    ManifestError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        field,
        message: with_expected(message, "YAML"),
    }
}

fn toml_error(path: &Path, text: &str, field: String, e: toml::de::Error) -> ManifestError {
    let (line, column) = match e.span() {
        Some(span) => {
            let mut start = span.start.min(text.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    let field = if field == "." || field == "?" {
        String::new()
    } else {
        field
    };
    ManifestError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        field,
        message: with_expected(e.message().trim().to_string(), "TOML"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        parse_manifest(
            Path::new("/packs/p/manifest.yaml"),
            text,
            ManifestFormat::Manifest,
            Path::new("/packs/p"),
        )
    }

    #[track_caller]
    fn fails(text: &str, field: &str, line: Option<usize>, expected: &str) -> ManifestError {
        let e = parse(text).expect_err(text);
        let shown = e.to_string();
        assert!(shown.starts_with("/packs/p/manifest.yaml"), "{shown}");
        assert_eq!(e.field().unwrap_or(""), field, "{shown}");
        assert_eq!(e.line(), line, "{shown}");
        assert!(
            e.expected().is_some_and(|x| x.contains(expected)),
            "{shown} (wanted {expected:?})"
        );
        e
    }

    #[test]
    fn reads_the_design_example() {
        let m = parse(
            "name: my_node_pack\nversion: 1.0.0\ndependencies:\n  - numpy==1.26.4\n  - torch>=2.0.0,<3.0\n  - opencv-python\n  - git+https://github.com/org/repo.git@v1.0\nisolated: true\nshare_torch: true\n",
        )
        .unwrap();
        assert_eq!(m.name, "my_node_pack");
        assert_eq!(m.version.as_deref(), Some("1.0.0"));
        assert_eq!(m.dependencies.len(), 4);
        assert!(m.isolated && m.share_torch);
        assert_eq!(m.sandbox, SandboxSettings::default());
    }

    #[test]
    fn reads_upstream_comfy_isolation_as_a_manifest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[project]\nname = \"iso-pack\"\nversion = \"1.2\"\ndependencies = [\"numpy>=1.25\", \"torch\"]\n[tool.comfy]\nPublisherId = \"x\"\n[tool.comfy.isolation]\ncan_isolate = true\nshare_torch = true\npackage_manager = \"uv\"\nextra_index_urls = [\"https://example.org/simple\"]\n",
        )
        .unwrap();
        let p = Pack::load(d.path()).unwrap();
        assert_eq!(p.format, ManifestFormat::ComfyIsolation);
        let m = &p.manifest;
        assert_eq!(
            (m.name.as_str(), m.version.as_deref()),
            ("iso-pack", Some("1.2"))
        );
        assert!(m.isolated && m.share_torch);
        assert_eq!(m.dependencies.len(), 2);
        assert_eq!(m.index.extra_index_urls, ["https://example.org/simple"]);
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[project]\nname = \"x\"\n[tool.comfy.isolation]\nshare_torch = \"yes\"\n",
        )
        .unwrap();
        let e = Pack::load(d.path()).unwrap_err();
        assert_eq!(e.field(), Some("tool.comfy.isolation.share_torch"), "{e}");
        // Without the table (and without [tool.nodecell]) there is no manifest.
        std::fs::write(d.path().join("pyproject.toml"), "[project]\nname = \"x\"\n").unwrap();
        assert!(matches!(
            Pack::load(d.path()),
            Err(ManifestError::NotFound { .. })
        ));
    }

    #[test]
    fn reads_shared_requirements() {
        let m = parse("name: p\nshared:\n  - pillow>=10.3.0\n  - numpy\n").unwrap();
        let names: Vec<_> = m.shared.iter().map(|r| r.name.clone().unwrap()).collect();
        assert_eq!(names, ["pillow", "numpy"]);
        assert!(parse("name: p\n").unwrap().shared.is_empty());
        fails(
            "name: p\nshared:\n  - \"not a requirement!\"\n",
            "shared[0]",
            Some(3),
            "",
        );
    }

    #[test]
    fn reads_the_sandbox_section() {
        let m = parse(
            "name: p\nsandbox:\n  network: true\n  writable_paths: [out, /tmp/x]\n  readonly_paths:\n    - /data\n  max_memory: 8GB\n  max_cpu_percent: 150\n  max_pids: 64\n  timeout: 2.5\n  gpu: true\npython: \"3.11\"\n",
        )
        .unwrap();
        let s = &m.sandbox;
        assert!(s.network && s.gpu);
        assert_eq!(
            s.writable_paths,
            vec![PathBuf::from("out"), PathBuf::from("/tmp/x")]
        );
        assert_eq!(s.readonly_paths, vec![PathBuf::from("/data")]);
        assert_eq!(s.max_memory, Some(8_000_000_000));
        assert_eq!(s.max_cpu_percent, Some(150.0));
        assert_eq!(s.max_pids, Some(64));
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(m.python.as_deref(), Some("3.11"));
    }

    #[test]
    fn each_kind_of_mistake_names_file_field_line_and_expected() {
        // unknown key (top level and nested)
        fails(
            "name: p\nshare_torhc: true\n",
            "share_torhc",
            Some(2),
            "expected one of",
        );
        fails(
            "name: p\nsandbox:\n  netwrok: true\n",
            "sandbox.netwrok",
            Some(3),
            "expected one of",
        );
        // wrong types
        fails(
            "name: p\nshare_torch: yes please\n",
            "share_torch",
            Some(2),
            "expected a boolean",
        );
        fails(
            "name: p\ndependencies: numpy\n",
            "dependencies",
            Some(2),
            "expected a sequence",
        );
        fails(
            "name: p\nsandbox:\n  max_pids: -3\n",
            "sandbox.max_pids",
            Some(3),
            "expected a whole number",
        );
        fails(
            "name: p\nsandbox: [1]\n",
            "sandbox",
            Some(2),
            "expected a mapping of sandbox settings",
        );
        fails(
            "- a\n",
            "",
            Some(1),
            "expected a mapping of manifest fields",
        );
        fails(
            "name: p\npython: 3.10\n",
            "python",
            Some(2),
            "expected a quoted version",
        );
        // bad requirement strings
        let e = fails(
            "name: p\ndependencies:\n  - numpy\n  - numpy>=\n",
            "dependencies[1]",
            Some(4),
            "expected a version after `>=`",
        );
        assert!(e.to_string().contains("numpy>="), "{e}");
        assert_eq!(e.to_string().matches("dependencies").count(), 1, "{e}");
        let e = fails(
            "name: p\ndependencies:\n  - numpy>=\n",
            "dependencies[0]",
            Some(3),
            "expected a version after `>=`",
        );
        assert_eq!(e.to_string().matches("dependencies").count(), 1, "{e}");
        fails(
            "name: p\ndependencies:\n  - -e ./x\n",
            "dependencies[0]",
            Some(3),
            "expected a package requirement",
        );
        // bad sizes and numbers
        fails(
            "name: p\nsandbox:\n  max_memory: 8 gigs\n",
            "sandbox.max_memory",
            Some(3),
            "expected a size",
        );
        fails(
            "name: p\nsandbox:\n  max_memory: 0\n",
            "sandbox.max_memory",
            Some(3),
            "greater than 0",
        );
        fails(
            "name: p\nsandbox:\n  max_cpu_percent: 0\n",
            "sandbox.max_cpu_percent",
            Some(3),
            "greater than 0",
        );
        fails(
            "name: p\nsandbox:\n  timeout: -1\n",
            "sandbox.timeout",
            Some(3),
            "greater than 0",
        );
        fails(
            "name: p\nindex_url: pypi.org\n",
            "index_url",
            Some(2),
            "expected an index URL",
        );
        // missing name, empty file, syntax error, duplicate key
        fails("version: 1.0\n", "name", None, "expected the pack's name");
        fails("# nothing\n", "", None, "expected a mapping");
        fails(
            "name: x\n  bad: indent\n",
            "",
            Some(2),
            "expected valid YAML",
        );
        fails(
            "name: x\nname: y\n",
            "",
            Some(1),
            "expected each field once",
        );
        fails(
            "name: \"\"\n",
            "name",
            Some(1),
            "expected a non-empty string",
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("8GB"), Ok(8_000_000_000));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5 g"), Ok(3 << 29));
        assert_eq!(parse_size("1024"), Ok(1024));
        for bad in ["", "GB", "8 gigs", "1.2.3G", "-1G", "0", "99999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn pyisolate_yaml_defaults_the_name_to_the_folder() {
        let m = parse_manifest(
            Path::new("/packs/MyNode/pyisolate.yaml"),
            "isolated: true\nshare_torch: false\nshare_cuda_ipc: false\ndependencies:\n  - numpy>=1.20\n",
            ManifestFormat::Pyisolate,
            Path::new("/packs/MyNode"),
        )
        .unwrap();
        assert_eq!(m.name, "MyNode");
        assert_eq!(m.dependencies.len(), 1);
    }

    #[test]
    fn pyproject_tool_nodecell() {
        let dir = Path::new("/packs/q");
        let path = dir.join("pyproject.toml");
        let m = parse_manifest(
            &path,
            "[project]\nname = \"q-pack\"\ndependencies = [\"numpy>=2\"]\nversion = \"0.1\"\n[tool.nodecell]\nshare_torch = false\n[tool.nodecell.sandbox]\nmax_memory = \"1GiB\"\n[tool.other]\nx = 1\n",
            ManifestFormat::Pyproject,
            dir,
        )
        .unwrap();
        assert_eq!(m.name, "q-pack");
        assert_eq!(m.dependencies[0].as_written(), "numpy>=2");
        assert_eq!(m.sandbox.max_memory, Some(1 << 30));

        let e = parse_manifest(
            &path,
            "[tool.nodecell]\nname='q'\ndependencies=['ok', 'numpy>=']\n",
            ManifestFormat::Pyproject,
            dir,
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("tool.nodecell.dependencies[1]"), "{e}");
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(e.expected().unwrap().contains("expected a version"), "{e}");

        let e = parse_manifest(
            &path,
            "[tool.nodecell]\nname='q'\n[tool.nodecell.sandbox]\ngpu = 'yes'\n",
            ManifestFormat::Pyproject,
            dir,
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("tool.nodecell.sandbox.gpu"), "{e}");
        assert_eq!(e.line(), Some(4), "{e}");

        let e =
            parse_manifest(&path, "[tool.nodecell\n", ManifestFormat::Pyproject, dir).unwrap_err();
        assert_eq!(e.line(), Some(1), "{e}");
        assert!(e.expected().is_some(), "{e}");
    }

    #[test]
    fn never_panics_on_garbage() {
        let alphabet: Vec<char> =
            "name: \n- [ ]{}\"'#:é1.5GB>=numpy,sandbox max_memory=[tool.nodecell]\t"
                .chars()
                .collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 11) % alphabet.len()])
                .collect();
            for f in [
                ManifestFormat::Manifest,
                ManifestFormat::Pyisolate,
                ManifestFormat::Pyproject,
            ] {
                let _ = parse_manifest(Path::new("/p/m"), &s, f, Path::new("/p"));
            }
        }
    }
}
