//! `nodecell migrate`: write a `manifest.yaml` for an existing ComfyUI-style
//! custom-node pack from what the pack already says about itself.
//!
//! Sources, read in this order (on a conflict the earlier one wins):
//!
//! 1. `requirements.txt`, as pip reads it: comments, `\` continuations,
//!    `-r` includes (relative to the including file), `-i`/`--index-url`,
//!    `--extra-index-url`, `-f`/`--find-links` (→ the manifest's index
//!    options), VCS and URL requirements, environment markers. `-e .`, local
//!    paths, `-c` constraints, `--hash` and other pip options have no place
//!    in a manifest: they are reported, never written.
//! 2. `pyproject.toml`: `[project]` `name`, `version`, `dependencies`, and
//!    upstream ComfyUI's `[tool.comfy.isolation]` (`can_isolate` →
//!    `isolated`, `share_torch`, `extra_index_urls`).
//! 3. `install.py`: never run, only read. `pip install ...` strings,
//!    `[... "pip", "install", ...]` argument lists and lists of package names
//!    (`packages = [...]`) become dependencies marked "found in install.py,
//!    please check".
//!
//! The name is `[project].name`, else the folder's name, cut down to
//! letters, digits, `.`, `_` and `-`. `isolated: true` unless the pack says
//! `can_isolate = false`. When the pack needs torch (a requirement on torch,
//! torchvision or torchaudio, or `import torch` in one of its `.py` files)
//! `share_torch: true` is set and `torch` itself is left out of
//! `dependencies`: the venv sees the host's torch. A companion built against
//! one torch version (`torchvision`, `torchaudio`, `xformers`) that is pinned
//! is kept without its pin so uv picks the build that matches the host's
//! torch (share_torch shares only torch and its own dependency closure, see
//! [`crate::shared`], so the companion must still be installed); each such
//! change is reported.
//!
//! Every requirement written passes [`Requirement::parse`]; one that does
//! not is reported and left out. The text is checked with the manifest
//! parser before it is written and read back with [`Pack::load`] after; a
//! difference is a bug in this module and fails loudly
//! ([`MigrateError::Unparseable`], [`MigrateError::ReadBack`]).
//!
//! ```no_run
//! use nodecell_provision::migrate::{migrate, MigrateOptions};
//! let report = migrate("/packs/ComfyUI-Foo".as_ref(), MigrateOptions::default()).unwrap();
//! eprint!("{report}");
//! ```

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::ManifestError;
use crate::manifest::{parse_manifest, Manifest, ManifestFormat, Pack, SandboxSettings};
use crate::pep440::{Op, Version};
use crate::requirement::{normalize_name, Requirement, Source};

/// The file `nodecell migrate` writes in the pack's folder.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// The distribution `share_torch` takes from the host instead of installing.
const SHARED_BY_HOST: &str = "torch";
/// Requirements on these mean the pack needs torch.
const TORCH_FAMILY: [&str; 3] = ["torch", "torchvision", "torchaudio"];
/// Distributions built against one torch version: a pin on them pins torch.
const TORCH_COMPANIONS: [&str; 3] = ["torchvision", "torchaudio", "xformers"];
/// Top-level modules whose import means the pack needs torch.
const TORCH_MODULES: [&str; 3] = ["torch", "torchvision", "torchaudio"];
/// Deepest chain of `-r` includes followed.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Most directory entries looked at when scanning for `import torch`.
const MAX_SCAN_ENTRIES: usize = 20_000;
/// Larger `.py` files are not scanned.
const MAX_SCAN_BYTES: u64 = 2 << 20;
/// How many `import torch` sites are reported.
const MAX_EVIDENCE: usize = 3;
/// The note on every dependency read from install.py.
const INSTALL_PY_NOTE: &str = "found in install.py, please check";

/// What `migrate` may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Replace an existing `manifest.yaml` (otherwise [`MigrateError::Exists`]).
    pub force: bool,
    /// Infer and check the manifest but write nothing.
    pub dry_run: bool,
}

/// Why a migration failed. Problems with the pack's own files are not
/// errors: they are [`Finding`]s in the [`MigrateReport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The path is not a folder.
    #[error("{}: not a folder: expected the folder of a node pack", path.display())]
    NotAPack {
        /// The path given.
        path: PathBuf,
    },
    /// The pack already has a manifest and `force` was not given.
    #[error("{} already exists: not replacing it (use --force to overwrite it, or --dry-run to print the inferred manifest)", path.display())]
    Exists {
        /// The existing manifest.
        path: PathBuf,
    },
    /// A file-system operation failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// What was being done (`write`, `rename`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The manifest text does not parse: a bug in this module.
    #[error("bug in nodecell migrate: the manifest for {} does not parse: {source}", path.display())]
    Unparseable {
        /// The manifest file (written, or about to be).
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: Box<ManifestError>,
    },
    /// The manifest parses but says something else than intended: a bug in
    /// this module.
    #[error("bug in nodecell migrate: {}: {field} reads back as {read}, but {wrote} was meant", path.display())]
    ReadBack {
        /// The manifest file.
        path: PathBuf,
        /// The field that differs.
        field: &'static str,
        /// What was meant.
        wrote: String,
        /// What the parser read.
        read: String,
    },
}

/// A value written to the manifest and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inferred<T> {
    /// The value.
    pub value: T,
    /// Where it came from: `requirements.txt:3`, `pyproject.toml: project.name`,
    /// `install.py:12`, `folder name`, `default`.
    pub from: String,
    /// What to check about it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl<T> Inferred<T> {
    fn new(value: T, from: impl Into<String>) -> Self {
        Inferred {
            value,
            from: from.into(),
            note: None,
        }
    }
}

/// What kind of thing a [`Finding`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// A line or value that is not a valid requirement.
    Unparseable,
    /// `-e` / `--editable`.
    Editable,
    /// A local path (`.`, `./pkg`, `/abs/x.whl`, `file:` URL).
    LocalPath,
    /// A pip option the manifest has no field for (`--hash`, `-c`, `--pre`...).
    UnsupportedOption,
    /// A `-r` include that could not be followed.
    Include,
    /// Requirements (or index URLs) that contradict each other.
    Conflict,
    /// Something read from `install.py`.
    InstallPy,
    /// A requirement left out because the host's torch is shared.
    SharedTorch,
    /// A torch companion (torchvision, xformers...) whose pin was removed.
    TorchCompanion,
    /// A file that could not be read or decoded.
    Unreadable,
    /// A setting or file that was not used.
    Ignored,
}

/// One thing the report tells the user about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What it is about.
    pub kind: FindingKind,
    /// Where: `requirements.txt:7`, `pyproject.toml: tool.comfy.isolation`.
    pub from: String,
    /// The text concerned, as written (may be empty).
    pub text: String,
    /// What happened and what to do.
    pub message: String,
}

/// What `migrate` inferred, from where, and what it could not infer.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// The pack's folder (absolute).
    pub pack_dir: PathBuf,
    /// Where the manifest is (or would be) written.
    pub manifest_path: PathBuf,
    /// Whether the file was written (false for a dry run).
    pub written: bool,
    /// Whether an existing manifest was replaced (`force`).
    pub replaced: bool,
    /// The files that were read, relative to the pack folder.
    pub sources: Vec<String>,
    /// The pack's name.
    pub name: Inferred<String>,
    /// The pack's version, if it says one.
    pub version: Option<Inferred<String>>,
    /// `isolated`.
    pub isolated: Inferred<bool>,
    /// `share_torch`.
    pub share_torch: Inferred<bool>,
    /// Why the pack is thought to need torch (requirements, imports).
    pub torch_evidence: Vec<Inferred<String>>,
    /// The dependencies written, in order.
    pub dependencies: Vec<Inferred<String>>,
    /// `index_url`.
    pub index_url: Option<Inferred<String>>,
    /// `extra_index_urls`.
    pub extra_index_urls: Vec<Inferred<String>>,
    /// `find_links`.
    pub find_links: Vec<Inferred<String>>,
    /// Requirements deliberately left out (torch, shared with the host).
    pub dropped: Vec<Finding>,
    /// Written, but worth a look (install.py hints, unpinned companions...).
    pub check: Vec<Finding>,
    /// Not written: what could not be inferred, and why.
    pub not_inferred: Vec<Finding>,
    /// The manifest's text.
    pub manifest: String,
}

// ---- entry points ------------------------------------------------------------

/// Infers the manifest for the pack in `dir` and writes it to
/// `dir/manifest.yaml` (unless `dry_run`), then reads it back with
/// [`Pack::load`] to check it.
pub fn migrate(dir: &Path, opts: MigrateOptions) -> Result<MigrateReport, MigrateError> {
    let dir = pack_dir(dir)?;
    let path = dir.join(MANIFEST_FILE);
    let existed = path.symlink_metadata().is_ok();
    if existed && !opts.force && !opts.dry_run {
        return Err(MigrateError::Exists { path });
    }
    let yml = dir.join("manifest.yml");
    if !existed && yml.symlink_metadata().is_ok() && !opts.force && !opts.dry_run {
        return Err(MigrateError::Exists { path: yml });
    }
    let mut report = infer(&dir)?;
    if existed {
        note_replaced_settings(&path, &dir, &mut report);
    }
    if opts.dry_run {
        return Ok(report);
    }
    if opts.force {
        let tmp = dir.join(format!(
            ".{MANIFEST_FILE}.migrate-{}.tmp",
            std::process::id()
        ));
        write_new(&tmp, &report.manifest)?;
        if let Err(source) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(MigrateError::Io {
                path,
                op: "rename into place",
                source,
            });
        }
    } else {
        write_new(&path, &report.manifest)?;
    }
    report.written = true;
    report.replaced = existed;
    let pack = Pack::load(&dir).map_err(|source| MigrateError::Unparseable {
        path: path.clone(),
        source: Box::new(source),
    })?;
    if pack.manifest_path != path {
        return Err(MigrateError::ReadBack {
            path,
            field: "(file)",
            wrote: MANIFEST_FILE.into(),
            read: pack.manifest_path.display().to_string(),
        });
    }
    compare(&path, &report, &pack.manifest)?;
    Ok(report)
}

/// Infers the manifest for the pack in `dir` without writing anything. The
/// text in [`MigrateReport::manifest`] has been checked with the manifest
/// parser.
pub fn infer(dir: &Path) -> Result<MigrateReport, MigrateError> {
    let dir = pack_dir(dir)?;
    let mut c = Collector::new(&dir);

    let req = dir.join("requirements.txt");
    if req.is_file() {
        c.read_requirements(&req, 0, None);
    }
    let py = if dir.join("pyproject.toml").is_file() {
        c.read_pyproject()
    } else {
        PyprojectInfo::default()
    };
    if dir.join("install.py").is_file() {
        c.read_install_py();
    }
    c.note_other_files();

    // Name and version.
    let folder = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match py.name {
        Some(n) => n,
        None => Inferred::new(folder, "folder name"),
    };
    let clean = sanitize_name(&name.value);
    let name = if clean != name.value {
        Inferred {
            note: Some(format!(
                "{:?} cut down to letters, digits, `.`, `_` and `-`",
                name.value
            )),
            value: clean,
            from: name.from,
        }
    } else {
        name
    };

    // isolated.
    let isolated = match py.can_isolate {
        Some(ci) => {
            if !ci.value {
                c.check.push(Finding {
                    kind: FindingKind::Ignored,
                    from: ci.from.clone(),
                    text: "can_isolate = false".into(),
                    message: "the pack says it cannot be isolated: written as `isolated: false`, so it runs in the host process without a sandbox; set `isolated: true` to try it in a cell".into(),
                });
            }
            ci
        }
        None => Inferred::new(true, "default"),
    };

    // torch.
    let mut evidence: Vec<Inferred<String>> = c
        .deps
        .iter()
        .filter(|d| dist_name(&d.req).is_some_and(|n| TORCH_FAMILY.contains(&n.as_str())))
        .map(|d| Inferred::new(d.req.to_string(), d.from.clone()))
        .collect();
    evidence.extend(scan_torch_imports(&dir));
    let share_torch = match py.share_torch {
        Some(st) => {
            if !st.value && !evidence.is_empty() {
                c.check.push(Finding {
                    kind: FindingKind::SharedTorch,
                    from: st.from.clone(),
                    text: "share_torch = false".into(),
                    message: format!(
                        "the pack needs torch ({}) but says share_torch = false: torch is installed into its own venv (several GB)",
                        evidence[0].from
                    ),
                });
            }
            st
        }
        None if !evidence.is_empty() => {
            let from = evidence
                .iter()
                .map(|e| format!("{} ({})", e.from, e.value))
                .collect::<Vec<_>>()
                .join(", ");
            Inferred::new(true, format!("torch needed: {from}"))
        }
        None => Inferred::new(false, "no torch requirement or `import torch` found"),
    };
    if share_torch.value {
        c.share_torch();
    }

    let deps = c.merge();
    if share_torch.value {
        let torch_indexes: Vec<(String, String)> = c
            .index_url
            .iter()
            .chain(&c.extra_index_urls)
            .chain(&c.find_links)
            .filter(|u| u.value.contains("download.pytorch.org"))
            .map(|u| (u.from.clone(), u.value.clone()))
            .collect();
        for (from, url) in torch_indexes {
            c.check.push(Finding {
                kind: FindingKind::SharedTorch,
                from,
                text: url,
                message: "a PyTorch index: with share_torch the host's torch is used, and builds from this index may pin another torch; keep it only if a dependency needs it".into(),
            });
        }
    }
    let sources = c.sources.clone();
    for list in [&mut c.dropped, &mut c.check, &mut c.not_inferred] {
        sort_findings(list, &sources);
    }
    let mut report = MigrateReport {
        manifest_path: dir.join(MANIFEST_FILE),
        pack_dir: dir.clone(),
        written: false,
        replaced: false,
        sources: c.sources,
        name,
        version: py.version,
        isolated,
        share_torch,
        torch_evidence: evidence,
        dependencies: deps
            .iter()
            .map(|d| Inferred {
                value: d.req.as_written().to_string(),
                from: d.from.clone(),
                note: d.note.clone(),
            })
            .collect(),
        index_url: c.index_url,
        extra_index_urls: c.extra_index_urls,
        find_links: c.find_links,
        dropped: c.dropped,
        check: c.check,
        not_inferred: c.not_inferred,
        manifest: String::new(),
    };
    report.manifest = render(&report);
    let parsed = parse_manifest(
        &report.manifest_path,
        &report.manifest,
        ManifestFormat::Manifest,
        &dir,
    )
    .map_err(|source| MigrateError::Unparseable {
        path: report.manifest_path.clone(),
        source: Box::new(source),
    })?;
    compare(&report.manifest_path, &report, &parsed)?;
    Ok(report)
}

/// Says so when the manifest about to be replaced has settings migrate
/// does not infer (`sandbox:`, `python:`).
fn note_replaced_settings(path: &Path, dir: &Path, report: &mut MigrateReport) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let Ok(old) = parse_manifest(path, &text, ManifestFormat::Manifest, dir) else {
        return;
    };
    let mut lost = Vec::new();
    if old.sandbox != SandboxSettings::default() {
        lost.push("sandbox");
    }
    if old.python.is_some() {
        lost.push("python");
    }
    if !lost.is_empty() {
        report.check.push(Finding {
            kind: FindingKind::Ignored,
            from: MANIFEST_FILE.into(),
            text: lost.join(", "),
            message: format!(
                "the existing manifest sets {}, which migrate does not infer: not carried over, copy it by hand",
                lost.join(" and ")
            ),
        });
    }
}

/// Orders findings by file (in the order read) and line; stable otherwise.
fn sort_findings(list: &mut [Finding], sources: &[String]) {
    list.sort_by_key(|f| {
        let head = f.from.split(": ").next().unwrap_or("");
        let (file, line) = match head.rsplit_once(':') {
            Some((file, n)) if n.parse::<usize>().is_ok() => (file, n.parse().unwrap_or(0)),
            _ => (head, 0),
        };
        let rank = sources
            .iter()
            .position(|s| s == file)
            .unwrap_or(sources.len());
        (rank, line)
    });
}

fn pack_dir(dir: &Path) -> Result<PathBuf, MigrateError> {
    if !dir.is_dir() {
        return Err(MigrateError::NotAPack {
            path: dir.to_path_buf(),
        });
    }
    std::fs::canonicalize(dir).map_err(|source| MigrateError::Io {
        path: dir.to_path_buf(),
        op: "resolve",
        source,
    })
}

/// Writes `text` to a file that must not exist yet.
fn write_new(path: &Path, text: &str) -> Result<(), MigrateError> {
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(MigrateError::Exists {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(MigrateError::Io {
                path: path.to_path_buf(),
                op: "create",
                source,
            })
        }
    };
    if let Err(source) = f.write_all(text.as_bytes()).and_then(|()| f.sync_all()) {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(MigrateError::Io {
            path: path.to_path_buf(),
            op: "write",
            source,
        });
    }
    Ok(())
}

/// Checks that the parsed manifest says what the report meant.
fn compare(path: &Path, r: &MigrateReport, m: &Manifest) -> Result<(), MigrateError> {
    let differ = |field: &'static str, wrote: String, read: String| {
        if wrote == read {
            Ok(())
        } else {
            Err(MigrateError::ReadBack {
                path: path.to_path_buf(),
                field,
                wrote,
                read,
            })
        }
    };
    differ("name", r.name.value.clone(), m.name.clone())?;
    differ(
        "version",
        format!("{:?}", r.version.as_ref().map(|v| &v.value)),
        format!("{:?}", m.version.as_ref()),
    )?;
    differ(
        "isolated",
        r.isolated.value.to_string(),
        m.isolated.to_string(),
    )?;
    differ(
        "share_torch",
        r.share_torch.value.to_string(),
        m.share_torch.to_string(),
    )?;
    differ(
        "dependencies",
        format!(
            "{:?}",
            r.dependencies.iter().map(|d| &d.value).collect::<Vec<_>>()
        ),
        format!(
            "{:?}",
            m.dependencies
                .iter()
                .map(|d| d.as_written())
                .collect::<Vec<_>>()
        ),
    )?;
    differ(
        "index_url",
        format!("{:?}", r.index_url.as_ref().map(|v| &v.value)),
        format!("{:?}", m.index.index_url.as_ref()),
    )?;
    differ(
        "extra_index_urls",
        format!(
            "{:?}",
            r.extra_index_urls
                .iter()
                .map(|v| &v.value)
                .collect::<Vec<_>>()
        ),
        format!("{:?}", m.index.extra_index_urls),
    )?;
    differ(
        "find_links",
        format!(
            "{:?}",
            r.find_links.iter().map(|v| &v.value).collect::<Vec<_>>()
        ),
        format!("{:?}", m.index.find_links),
    )?;
    for d in &m.dependencies {
        // By construction; the manifest parser already ran it, this says so.
        if let Err(e) = Requirement::parse(d.as_written()) {
            return Err(MigrateError::ReadBack {
                path: path.to_path_buf(),
                field: "dependencies",
                wrote: d.as_written().to_string(),
                read: e,
            });
        }
    }
    Ok(())
}

// ---- names -------------------------------------------------------------------

/// Cuts a folder or project name down to what a manifest name should hold:
/// ASCII letters, digits, `.`, `_` and `-` (other runs become one `_`),
/// starting and ending with a letter or digit; `pack` if nothing is left.
pub fn sanitize_name(raw: &str) -> String {
    let mut out = String::new();
    let mut replaced = false;
    for c in raw.trim().chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
            replaced = false;
        } else if !replaced {
            out.push('_');
            replaced = true;
        }
    }
    let out = out.trim_matches(|c| matches!(c, '.' | '_' | '-'));
    if out.is_empty() {
        "pack".into()
    } else {
        out.to_string()
    }
}

/// The distribution a requirement installs, if it can be told: its name, or
/// the name in a wheel URL's file name.
fn dist_name(r: &Requirement) -> Option<String> {
    if let Some(n) = &r.name {
        return Some(n.clone());
    }
    match &r.source {
        Source::Url(u) => wheel_name(u),
        _ => None,
    }
}

/// `torch` for `https://host/whl/cu118/torch-2.1.0%2Bcu118-cp311-...whl`.
fn wheel_name(url: &str) -> Option<String> {
    let path = url.split(['#', '?']).next()?;
    let file = path.rsplit('/').next()?;
    if !file.to_ascii_lowercase().ends_with(".whl") {
        return None;
    }
    let name = file.split('-').next()?;
    (!name.is_empty()).then(|| normalize_name(name))
}

// ---- collecting ----------------------------------------------------------------

struct Dep {
    req: Requirement,
    from: String,
    note: Option<String>,
}

#[derive(Default)]
struct PyprojectInfo {
    name: Option<Inferred<String>>,
    version: Option<Inferred<String>>,
    can_isolate: Option<Inferred<bool>>,
    share_torch: Option<Inferred<bool>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IndexKind {
    Default,
    Extra,
    FindLinks,
}

/// What a requirement string turned out to be.
enum Class {
    Dep(Requirement),
    Local,
    Bad(String),
}

fn is_archive(t: &str) -> bool {
    let l = t.to_ascii_lowercase();
    !l.contains("://")
        && !l.contains('@')
        && [".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"]
            .iter()
            .any(|e| l.ends_with(e))
}

fn classify(text: &str) -> Class {
    let t = text.trim();
    let looks_local = t == "."
        || t == ".."
        || t.starts_with("./")
        || t.starts_with("../")
        || t.starts_with('/')
        || t.starts_with('~')
        || t.starts_with("file:")
        || t.contains('\\')
        || is_archive(t);
    if looks_local {
        return Class::Local;
    }
    match Requirement::parse(t) {
        Ok(r) => match &r.source {
            Source::Path(_) => Class::Local,
            Source::Url(u) if u.starts_with("file:") => Class::Local,
            _ => Class::Dep(r),
        },
        Err(e) => Class::Bad(e),
    }
}

const LOCAL_PATH: &str = "a local path: it exists only on the machine it was written for, and a manifest installs from indexes and URLs; left out (publish it, use a git+ URL, or vendor the code into the pack)";

fn url_ok(u: &str) -> bool {
    ["http://", "https://", "file://"]
        .iter()
        .any(|p| u.len() > p.len() && u.starts_with(p))
        && !u.contains(char::is_whitespace)
}

struct Collector {
    dir: PathBuf,
    sources: Vec<String>,
    seen_files: HashSet<PathBuf>,
    deps: Vec<Dep>,
    index_url: Option<Inferred<String>>,
    extra_index_urls: Vec<Inferred<String>>,
    find_links: Vec<Inferred<String>>,
    dropped: Vec<Finding>,
    check: Vec<Finding>,
    not_inferred: Vec<Finding>,
}

impl Collector {
    fn new(dir: &Path) -> Collector {
        Collector {
            dir: dir.to_path_buf(),
            sources: Vec::new(),
            seen_files: HashSet::new(),
            deps: Vec::new(),
            index_url: None,
            extra_index_urls: Vec::new(),
            find_links: Vec::new(),
            dropped: Vec::new(),
            check: Vec::new(),
            not_inferred: Vec::new(),
        }
    }

    fn rel(&self, p: &Path) -> String {
        match p.strip_prefix(&self.dir) {
            Ok(r) => r.display().to_string(),
            Err(_) => p.display().to_string(),
        }
    }

    fn not(&mut self, kind: FindingKind, from: &str, text: &str, message: impl Into<String>) {
        self.not_inferred.push(Finding {
            kind,
            from: from.to_string(),
            text: text.to_string(),
            message: message.into(),
        });
    }

    /// Reads a file as text: UTF-8 (BOM dropped), or UTF-16 with a BOM;
    /// anything else is decoded lossily and reported.
    fn read_text(&mut self, path: &Path) -> Option<String> {
        let shown = self.rel(path);
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.not(
                    FindingKind::Unreadable,
                    &shown,
                    "",
                    format!("cannot read: {e}"),
                );
                return None;
            }
        };
        self.sources.push(shown.clone());
        let (text, lossy) = decode(&bytes);
        if lossy {
            self.not(
                FindingKind::Unreadable,
                &shown,
                "",
                "not valid UTF-8 (or UTF-16 with a BOM): undecodable bytes were replaced, lines holding them are reported as unparseable",
            );
        }
        Some(text)
    }

    // -- requirements.txt --

    fn read_requirements(&mut self, path: &Path, depth: usize, note: Option<&str>) {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if !self.seen_files.insert(key) {
            return; // already read (or an include cycle)
        }
        let Some(text) = self.read_text(path) else {
            return;
        };
        let shown = self.rel(path);
        for (n, line) in logical_lines(&text) {
            let from = format!("{shown}:{n}");
            let l = strip_comment(&line).trim().to_string();
            if l.is_empty() {
                continue;
            }
            if l.starts_with('-') {
                self.req_option(&l, &from, path, depth, note);
                continue;
            }
            let (req, opts) = split_trailing_options(&l);
            if let Some(opts) = opts {
                let first = opts.split_whitespace().next().unwrap_or("");
                let name = first.split('=').next().unwrap_or("");
                if matches!(
                    name,
                    "-i" | "--index-url" | "--extra-index-url" | "-f" | "--find-links"
                ) {
                    self.req_option(opts, &from, path, depth, note);
                } else {
                    self.not(
                        FindingKind::UnsupportedOption,
                        &from,
                        opts,
                        format!("pip option(s) after `{req}` have no manifest field (hash checking, build options); the requirement was kept without them"),
                    );
                }
            }
            self.add(req, &from, note);
        }
    }

    /// Adds one requirement string, or reports why not.
    fn add(&mut self, text: &str, from: &str, note: Option<&str>) {
        match classify(text) {
            Class::Dep(req) => {
                if let Some(n) = note {
                    self.check.push(Finding {
                        kind: FindingKind::InstallPy,
                        from: from.to_string(),
                        text: text.trim().to_string(),
                        message: n.to_string(),
                    });
                }
                self.deps.push(Dep {
                    req,
                    from: from.to_string(),
                    note: note.map(str::to_string),
                });
            }
            Class::Local => self.not(FindingKind::LocalPath, from, text.trim(), LOCAL_PATH),
            Class::Bad(e) => self.not(
                FindingKind::Unparseable,
                from,
                text.trim(),
                format!("{e}; left out"),
            ),
        }
    }

    fn req_option(&mut self, l: &str, from: &str, file: &Path, depth: usize, note: Option<&str>) {
        let (name, value) = split_option(l);
        let need_value = |c: &mut Collector| {
            c.not(
                FindingKind::Unparseable,
                from,
                l,
                format!("expected a value after `{name}`; left out"),
            )
        };
        match name {
            "-r" | "--requirement" => {
                let Some(v) = value else { return need_value(self) };
                self.include(v, l, from, file, depth, note);
            }
            "-c" | "--constraint" => self.not(
                FindingKind::UnsupportedOption,
                from,
                l,
                "constraints files are not carried into the manifest (it has no constraints field); pin what matters in dependencies",
            ),
            "-e" | "--editable" => {
                let Some(v) = value else { return need_value(self) };
                let vcs = ["git+", "hg+", "svn+", "bzr+"].iter().any(|p| v.starts_with(p));
                if vcs {
                    if let Class::Dep(req) = classify(v) {
                        self.check.push(Finding {
                            kind: FindingKind::Editable,
                            from: from.to_string(),
                            text: l.to_string(),
                            message: format!("written as `{v}`, a normal (not editable) install; please check"),
                        });
                        self.deps.push(Dep {
                            req,
                            from: from.to_string(),
                            note: Some(match note {
                                Some(n) => format!("was -e; {n}"),
                                None => "was -e (editable); written as a normal install".into(),
                            }),
                        });
                        return;
                    }
                    self.add(v, from, note);
                    return;
                }
                let what = if matches!(v, "." | "./") {
                    "an editable install of the pack itself: nodecell loads the pack from its folder, so this is usually not needed"
                } else {
                    "an editable install of a local folder: a manifest installs from indexes and URLs only"
                };
                self.not(FindingKind::Editable, from, l, format!("{what}; left out"));
            }
            "-i" | "--index-url" => {
                let Some(v) = value else { return need_value(self) };
                self.index(IndexKind::Default, v, from, note);
            }
            "--extra-index-url" => {
                let Some(v) = value else { return need_value(self) };
                self.index(IndexKind::Extra, v, from, note);
            }
            "-f" | "--find-links" => {
                let Some(v) = value else { return need_value(self) };
                self.index(IndexKind::FindLinks, v, from, note);
            }
            "--no-index" => self.not(
                FindingKind::UnsupportedOption,
                from,
                l,
                "the manifest has no `--no-index`; packages come from index_url (default PyPI); left out",
            ),
            _ => self.not(
                FindingKind::UnsupportedOption,
                from,
                l,
                format!("pip option `{name}` has no manifest field; left out"),
            ),
        }
    }

    fn include(
        &mut self,
        v: &str,
        l: &str,
        from: &str,
        file: &Path,
        depth: usize,
        note: Option<&str>,
    ) {
        if v.contains("://") {
            return self.not(
                FindingKind::Include,
                from,
                l,
                "includes from URLs are not fetched (no network): copy the file into the pack and include it by path",
            );
        }
        if depth >= MAX_INCLUDE_DEPTH {
            return self.not(
                FindingKind::Include,
                from,
                l,
                format!("more than {MAX_INCLUDE_DEPTH} nested includes: not followed"),
            );
        }
        let base = file.parent().unwrap_or(&self.dir).to_path_buf();
        let target = base.join(v);
        if !target.is_file() {
            return self.not(
                FindingKind::Include,
                from,
                l,
                format!(
                    "included file {} not found: its requirements are missing",
                    target.display()
                ),
            );
        }
        self.read_requirements(&target, depth + 1, note);
    }

    fn index(&mut self, kind: IndexKind, v: &str, from: &str, note: Option<&str>) {
        let v = v.trim();
        let text = match kind {
            IndexKind::Default => format!("--index-url {v}"),
            IndexKind::Extra => format!("--extra-index-url {v}"),
            IndexKind::FindLinks => format!("--find-links {v}"),
        };
        if v.contains("${") {
            return self.not(
                FindingKind::Unparseable,
                from,
                &text,
                "refers to an environment variable: pip expands it, a manifest does not; left out (write the URL, without secrets)",
            );
        }
        if !url_ok(v) {
            if kind == IndexKind::FindLinks && !v.contains("://") {
                return self.not(FindingKind::LocalPath, from, &text, LOCAL_PATH);
            }
            return self.not(
                FindingKind::Unparseable,
                from,
                &text,
                "expected a URL starting with https://, http:// or file://; left out",
            );
        }
        let mut item = Inferred::new(v.to_string(), from);
        item.note = note.map(str::to_string);
        // An install.py `--index-url` applies to one pip command; as the
        // manifest's index_url it would replace PyPI for every dependency.
        let kind = if note.is_some() && kind == IndexKind::Default {
            item.note = note.map(|n| {
                format!("was --index-url; written as an extra index so PyPI stays the default; {n}")
            });
            IndexKind::Extra
        } else {
            kind
        };
        if let Some(n) = &item.note {
            self.check.push(Finding {
                kind: FindingKind::InstallPy,
                from: from.to_string(),
                text: text.clone(),
                message: n.clone(),
            });
        }
        match kind {
            IndexKind::Default => match &self.index_url {
                Some(first) if first.value != v => {
                    let msg = format!(
                        "a second index URL; kept the first ({} from {}), left this one out",
                        first.value, first.from
                    );
                    self.not(FindingKind::Conflict, from, &text, msg);
                }
                Some(_) => {}
                None => self.index_url = Some(item),
            },
            IndexKind::Extra => {
                if !self.extra_index_urls.iter().any(|e| e.value == v) {
                    self.extra_index_urls.push(item);
                }
            }
            IndexKind::FindLinks => {
                if !self.find_links.iter().any(|e| e.value == v) {
                    self.find_links.push(item);
                }
            }
        }
    }

    // -- pyproject.toml --

    fn read_pyproject(&mut self) -> PyprojectInfo {
        let mut info = PyprojectInfo::default();
        let path = self.dir.join("pyproject.toml");
        let Some(text) = self.read_text(&path) else {
            return info;
        };
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                let from = match line {
                    Some(l) => format!("pyproject.toml:{l}"),
                    None => "pyproject.toml".into(),
                };
                self.not(
                    FindingKind::Unreadable,
                    &from,
                    "",
                    format!(
                        "not valid TOML ({}): nothing read from it",
                        e.message().trim()
                    ),
                );
                return info;
            }
        };
        let bad_type = |c: &mut Collector, field: &str, v: &toml::Value, want: &str| {
            c.not(
                FindingKind::Unparseable,
                &format!("pyproject.toml: {field}"),
                &v.to_string(),
                format!("expected {want}; not used"),
            );
        };
        if let Some(project) = table.get("project").and_then(|p| p.as_table()) {
            match project.get("name") {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => {
                    info.name = Some(Inferred::new(s.clone(), "pyproject.toml: project.name"));
                }
                Some(v) => bad_type(self, "project.name", v, "a non-empty string"),
                None => {}
            }
            match project.get("version") {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => {
                    info.version = Some(Inferred::new(
                        s.trim().to_string(),
                        "pyproject.toml: project.version",
                    ));
                }
                Some(v) => bad_type(self, "project.version", v, "a version string"),
                None => {}
            }
            match project.get("dependencies") {
                Some(toml::Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let from = format!("pyproject.toml: project.dependencies[{i}]");
                        match item {
                            toml::Value::String(s) => self.add(s, &from, None),
                            v => bad_type(
                                self,
                                &format!("project.dependencies[{i}]"),
                                v,
                                "a requirement string",
                            ),
                        }
                    }
                }
                Some(v) => bad_type(
                    self,
                    "project.dependencies",
                    v,
                    "an array of requirement strings",
                ),
                None => {}
            }
        }
        let tool = table.get("tool").and_then(|t| t.as_table());
        if let Some(iso) = tool
            .and_then(|t| t.get("comfy"))
            .and_then(|c| c.as_table())
            .and_then(|c| c.get("isolation"))
        {
            let Some(iso) = iso.as_table() else {
                bad_type(self, "tool.comfy.isolation", iso, "a table");
                return info;
            };
            for (k, v) in iso {
                let field = format!("tool.comfy.isolation.{k}");
                let from = format!("pyproject.toml: {field}");
                match (k.as_str(), v) {
                    ("can_isolate", toml::Value::Boolean(b)) => {
                        info.can_isolate = Some(Inferred::new(*b, from));
                    }
                    ("share_torch", toml::Value::Boolean(b)) => {
                        info.share_torch = Some(Inferred::new(*b, from));
                    }
                    ("can_isolate" | "share_torch", v) => bad_type(self, &field, v, "true or false"),
                    ("extra_index_urls", toml::Value::Array(urls)) => {
                        for (i, u) in urls.iter().enumerate() {
                            match u {
                                toml::Value::String(s) => {
                                    self.index(IndexKind::Extra, s, &format!("{from}[{i}]"), None)
                                }
                                v => bad_type(self, &format!("{field}[{i}]"), v, "a URL string"),
                            }
                        }
                    }
                    ("extra_index_urls", v) => bad_type(self, &field, v, "an array of URL strings"),
                    (k, v) => self.check.push(Finding {
                        kind: FindingKind::Ignored,
                        from,
                        text: format!("{k} = {v}"),
                        message: "not used by nodecell (the manifest's sandbox and venv settings replace it)".into(),
                    }),
                }
            }
        }
        if tool.is_some_and(|t| t.contains_key("nodecell")) {
            self.check.push(Finding {
                kind: FindingKind::Ignored,
                from: "pyproject.toml: tool.nodecell".into(),
                text: String::new(),
                message: "manifest.yaml takes precedence over [tool.nodecell]; its settings were not read, merge them by hand".into(),
            });
        }
        info
    }

    // -- install.py --

    fn read_install_py(&mut self) {
        let path = self.dir.join("install.py");
        let Some(text) = self.read_text(&path) else {
            return;
        };
        self.check.push(Finding {
            kind: FindingKind::InstallPy,
            from: "install.py".into(),
            text: String::new(),
            message: "install.py runs code when the pack is installed; nodecell does not run it. Its pip installs were read as hints (marked \"found in install.py, please check\"); check what else it does (conditions, downloads, builds, model files)".into(),
        });
        for hint in scan_install_py(&text) {
            let from = format!("install.py:{}", hint.line);
            match hint.what {
                Hint::Args(args) => self.pip_args(&args, &from),
                Hint::Package(p) => self.add(&p, &from, Some(INSTALL_PY_NOTE)),
            }
        }
    }

    fn pip_args(&mut self, args: &[Arg], from: &str) {
        let note = Some(INSTALL_PY_NOTE);
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            let w = match arg {
                Arg::Computed(t) => {
                    self.not(
                        FindingKind::InstallPy,
                        from,
                        &format!("pip install ... {t}"),
                        "pip install with a computed argument: what it installs could not be read; please check",
                    );
                    continue;
                }
                Arg::Literal(w) => w.clone(),
            };
            if !w.starts_with('-') {
                if w == "." {
                    self.not(FindingKind::LocalPath, from, "pip install .", "installs the pack itself: nodecell loads the pack from its folder; left out");
                } else {
                    self.add(&w, from, note);
                }
                continue;
            }
            let (name, inline) = split_option(&w);
            let takes_value = matches!(
                name,
                "-r" | "--requirement"
                    | "-c"
                    | "--constraint"
                    | "-e"
                    | "--editable"
                    | "-i"
                    | "--index-url"
                    | "--extra-index-url"
                    | "-f"
                    | "--find-links"
            ) || PIP_VALUE_OPTIONS.contains(&name);
            let value: Option<Arg> = match inline {
                Some(v) => Some(Arg::Literal(v.to_string())),
                None if takes_value && i < args.len() => {
                    i += 1;
                    Some(args[i - 1].clone())
                }
                None => None,
            };
            if PIP_VALUE_OPTIONS.contains(&name) || !takes_value {
                continue; // --target DIR, --upgrade, --no-deps, -q ...
            }
            match value {
                Some(Arg::Literal(v)) => {
                    if matches!(name, "-r" | "--requirement") {
                        let target = self.dir.join(&v);
                        let key = std::fs::canonicalize(&target).unwrap_or(target.clone());
                        if self.seen_files.contains(&key) {
                            continue; // requirements.txt, already read
                        }
                        let l = format!("{name} {v}");
                        let file = self.dir.join("install.py");
                        self.include(&v, &l, from, &file, 0, note);
                    } else {
                        self.req_option(
                            &format!("{name} {v}"),
                            from,
                            &self.dir.join("install.py"),
                            0,
                            note,
                        );
                    }
                }
                Some(Arg::Computed(t)) => {
                    let msg = if matches!(name, "-r" | "--requirement") {
                        "pip install -r with a computed path (most often the pack's requirements.txt, which was read); please check"
                    } else {
                        "pip option with a computed value; please check"
                    };
                    self.check.push(Finding {
                        kind: FindingKind::InstallPy,
                        from: from.to_string(),
                        text: format!("{name} {t}"),
                        message: msg.into(),
                    });
                }
                None => self.not(
                    FindingKind::InstallPy,
                    from,
                    name,
                    format!("expected a value after `{name}`; please check"),
                ),
            }
        }
    }

    fn note_other_files(&mut self) {
        for (file, message) in [
            ("setup.py", "setup.py found: its install_requires were not read; add them to dependencies by hand"),
            ("pyisolate.yaml", "pyisolate.yaml found: manifest.yaml takes precedence over it and its settings were not read; merge them by hand"),
            ("manifest.yml", "manifest.yml found: manifest.yaml takes precedence over it; remove one of them"),
        ] {
            if self.dir.join(file).exists() {
                self.check.push(Finding {
                    kind: FindingKind::Ignored,
                    from: file.into(),
                    text: String::new(),
                    message: message.into(),
                });
            }
        }
        if self.sources.is_empty() {
            self.check.push(Finding {
                kind: FindingKind::Ignored,
                from: ".".into(),
                text: String::new(),
                message:
                    "no requirements.txt, pyproject.toml or install.py: dependencies left empty"
                        .into(),
            });
        }
    }

    // -- torch --

    /// `share_torch: true`: leaves torch out, unpins pinned companions.
    fn share_torch(&mut self) {
        let deps = std::mem::take(&mut self.deps);
        for mut d in deps {
            let Some(name) = dist_name(&d.req) else {
                self.deps.push(d);
                continue;
            };
            if name == SHARED_BY_HOST {
                self.dropped.push(Finding {
                    kind: FindingKind::SharedTorch,
                    from: d.from,
                    text: d.req.to_string(),
                    message: "left out: share_torch uses the host's torch (provisioning adds the constraint torch==<host version>)".into(),
                });
                continue;
            }
            if !TORCH_COMPANIONS.contains(&name.as_str()) {
                self.deps.push(d);
                continue;
            }
            let pinned = match &d.req.source {
                Source::Index(specs) => specs.iter().any(|(op, _)| {
                    matches!(
                        op,
                        Op::Eq | Op::Arbitrary | Op::Compatible | Op::Lt | Op::Le
                    )
                }),
                Source::Url(_) => true,
                Source::Path(_) => false,
            };
            if !pinned {
                self.deps.push(d);
                continue;
            }
            let mut text = name.clone();
            if !d.req.extras.is_empty() {
                let _ = write!(text, "[{}]", d.req.extras.join(","));
            }
            if let Some(m) = &d.req.marker {
                let _ = write!(text, " ; {m}");
            }
            match Requirement::parse(&text) {
                Ok(req) => {
                    let why = if name == "xformers" {
                        "each xformers release is built against one torch version"
                    } else {
                        "each release is built against one torch version, and share_torch shares only torch and its own dependencies, so it must still be installed"
                    };
                    self.check.push(Finding {
                        kind: FindingKind::TorchCompanion,
                        from: d.from.clone(),
                        text: d.req.to_string(),
                        message: format!("{why}: written as `{text}` so uv picks the build that matches the host's torch; please check"),
                    });
                    let note = format!("was {}: unpinned for the host's torch", d.req);
                    d.note = Some(match d.note {
                        Some(n) => format!("{n}; {note}"),
                        None => note,
                    });
                    d.req = req;
                    self.deps.push(d);
                }
                Err(e) => self.not(FindingKind::Unparseable, &d.from, &text, e),
            }
        }
    }

    // -- merging --

    /// Drops exact duplicates, then requirements that contradict an earlier
    /// one (reported); returns what is written.
    fn merge(&mut self) -> Vec<Dep> {
        let deps = std::mem::take(&mut self.deps);
        let mut out: Vec<Dep> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for d in deps {
            if !seen.insert(d.req.canonical(&self.dir)) {
                continue;
            }
            // Every requirement written must parse as written.
            if let Err(e) = Requirement::parse(d.req.as_written()) {
                self.not(FindingKind::Unparseable, &d.from, d.req.as_written(), e);
                continue;
            }
            let marker = d.req.marker.as_ref().map(|m| m.to_string());
            let same: Vec<&Dep> = match &d.req.name {
                Some(n) => out
                    .iter()
                    .filter(|o| {
                        o.req.name.as_ref() == Some(n)
                            && o.req.marker.as_ref().map(|m| m.to_string()) == marker
                    })
                    .collect(),
                None => Vec::new(),
            };
            let conflict = match &d.req.source {
                Source::Index(specs) => {
                    let mut all: Vec<(Op, String)> = specs.clone();
                    for o in &same {
                        if let Source::Index(s) = &o.req.source {
                            all.extend(s.iter().cloned());
                        }
                    }
                    let idx: Vec<&&Dep> = same
                        .iter()
                        .filter(|o| matches!(o.req.source, Source::Index(_)))
                        .collect();
                    (!idx.is_empty() && unsatisfiable(&all)).then(|| {
                        idx.iter()
                            .map(|o| format!("`{}` ({})", o.req, o.from))
                            .collect::<Vec<_>>()
                    })
                }
                Source::Url(u) => {
                    let other: Vec<String> = same
                        .iter()
                        .filter(|o| matches!(&o.req.source, Source::Url(x) if x != u))
                        .map(|o| format!("`{}` ({})", o.req, o.from))
                        .collect();
                    (!other.is_empty()).then_some(other)
                }
                Source::Path(_) => None,
            };
            if let Some(with) = conflict {
                let msg = format!(
                    "conflicts with {}: no version satisfies both; kept the earlier one and left this one out: pick one by hand",
                    with.join(", ")
                );
                self.not(FindingKind::Conflict, &d.from, d.req.as_written(), msg);
                continue;
            }
            out.push(d);
        }
        out
    }
}

/// Whether no version can satisfy all of `specs` (false when unsure).
fn unsatisfiable(specs: &[(Op, String)]) -> bool {
    // A pin must satisfy everything else.
    for (op, v) in specs {
        if *op == Op::Eq && !v.ends_with(".*") {
            let Some(pin) = Version::parse(v) else {
                continue;
            };
            for (op2, v2) in specs {
                if *op2 == Op::Arbitrary {
                    continue;
                }
                if Version::parse(v2.trim_end_matches(".*")).is_none() {
                    continue;
                }
                if !pin.matches(*op2, v2) {
                    return true;
                }
            }
        }
        if *op == Op::Arbitrary {
            for (op2, v2) in specs {
                if *op2 == Op::Arbitrary && v2 != v {
                    return true;
                }
            }
        }
    }
    // Bounds: the greatest lower bound above the least upper bound.
    let mut lowers: Vec<(Version, String, bool)> = Vec::new(); // (version, text, inclusive)
    let mut uppers: Vec<(String, bool)> = Vec::new();
    for (op, v) in specs {
        if v.ends_with(".*") {
            continue;
        }
        let Some(ver) = Version::parse(v) else {
            continue;
        };
        match op {
            Op::Ge => lowers.push((ver, v.clone(), true)),
            Op::Gt => lowers.push((ver, v.clone(), false)),
            Op::Le => uppers.push((v.clone(), true)),
            Op::Lt => uppers.push((v.clone(), false)),
            Op::Compatible => {
                let rel = ver.release();
                if rel.len() >= 2 {
                    let mut up: Vec<u64> = rel[..rel.len() - 1].to_vec();
                    if let Some(last) = up.last_mut() {
                        *last += 1;
                    }
                    let up = up.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
                    uppers.push((up, false));
                }
                lowers.push((ver, v.clone(), true));
            }
            _ => {}
        }
    }
    for (lv, _, linc) in &lowers {
        for (u, uinc) in &uppers {
            if lv.matches(Op::Gt, u) {
                return true;
            }
            if lv.matches(Op::Eq, u) && !(*linc && *uinc) {
                return true;
            }
        }
    }
    false
}

// ---- requirements.txt lexing ------------------------------------------------------

/// Decodes file bytes; `true` when some bytes could not be decoded.
fn decode(bytes: &[u8]) -> (String, bool) {
    if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return match String::from_utf8(rest.to_vec()) {
            Ok(s) => (s, false),
            Err(_) => (String::from_utf8_lossy(rest).into_owned(), true),
        };
    }
    let utf16 = |rest: &[u8], le: bool| -> (String, bool) {
        let units: Vec<u16> = rest
            .chunks(2)
            .map(|c| {
                let pair = [c[0], *c.get(1).unwrap_or(&0)];
                if le {
                    u16::from_le_bytes(pair)
                } else {
                    u16::from_be_bytes(pair)
                }
            })
            .collect();
        let lossy =
            rest.len() % 2 == 1 || char::decode_utf16(units.iter().copied()).any(|c| c.is_err());
        (String::from_utf16_lossy(&units), lossy)
    };
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        return utf16(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
        return utf16(rest, false);
    }
    match String::from_utf8(bytes.to_vec()) {
        Ok(s) => (s, false),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
    }
}

fn is_comment_line(l: &str) -> bool {
    l.trim_start().starts_with('#')
}

/// pip's line joining: a line ending in `\` continues on the next one
/// (comment lines end a continuation). Returns (first line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut acc: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let n = i + 1;
        if !line.ends_with('\\') || is_comment_line(line) {
            // pip: a comment line gets a leading space, so that it is
            // still cut as a comment once joined.
            let line = if is_comment_line(line) {
                format!(" {line}")
            } else if acc.is_some() {
                line.trim_start().to_string()
            } else {
                line.to_string()
            };
            match acc.take() {
                Some((start, mut s)) => {
                    s.push_str(&line);
                    out.push((start, s));
                }
                None => out.push((n, line)),
            }
        } else {
            let part = line.trim_matches('\\');
            match &mut acc {
                Some((_, s)) => s.push_str(part.trim_start()),
                None => acc = Some((n, part.to_string())),
            }
        }
    }
    if let Some(a) = acc {
        out.push(a);
    }
    out
}

/// Cuts a `#` comment: at the start, or after whitespace (so URL fragments
/// such as `#egg=name` stay).
fn strip_comment(line: &str) -> &str {
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_ws {
            return &line[..i];
        }
        prev_ws = c.is_whitespace();
    }
    line
}

/// `pkg==1.0 --hash=sha256:...` → (`pkg==1.0`, Some(`--hash=...`)).
fn split_trailing_options(l: &str) -> (&str, Option<&str>) {
    let mut prev_ws = false;
    for (i, c) in l.char_indices() {
        if c == '-' && prev_ws {
            return (l[..i].trim_end(), Some(l[i..].trim()));
        }
        prev_ws = c.is_whitespace();
    }
    (l, None)
}

/// `--index-url=URL`, `--index-url URL`, `-rfile`, `-r file` → (name, value).
fn split_option(l: &str) -> (&str, Option<&str>) {
    fn value(v: &str) -> Option<&str> {
        let v = v.trim();
        (!v.is_empty()).then_some(v)
    }
    let l = l.trim();
    if l.starts_with("--") {
        let end = l
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(l.len());
        let rest = &l[end..];
        let rest = rest.strip_prefix('=').unwrap_or(rest);
        return (&l[..end], value(rest));
    }
    let mut it = l.char_indices();
    it.next(); // '-'
    match it.next() {
        Some((i, c)) => {
            let end = i + c.len_utf8();
            (&l[..end], value(&l[end..]))
        }
        None => (l, None),
    }
}

/// pip options (besides the index ones) that take a value.
const PIP_VALUE_OPTIONS: [&str; 24] = [
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--upgrade-strategy",
    "--trusted-host",
    "--src",
    "--progress-bar",
    "-C",
    "--config-settings",
    "--global-option",
    "--no-binary",
    "--only-binary",
    "--log",
    "--cache-dir",
    "--timeout",
    "--retries",
    "--proxy",
    "--cert",
    "--python",
];

// ---- install.py --------------------------------------------------------------------

/// One argument of a pip command found in install.py.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    /// A string literal.
    Literal(String),
    /// A variable, call, f-string placeholder...
    Computed(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Hint {
    /// The arguments after `pip install`.
    Args(Vec<Arg>),
    /// An entry of a list of package names.
    Package(String),
}

#[derive(Debug, PartialEq, Eq)]
struct FoundHint {
    line: usize,
    what: Hint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Str { value: String, fstring: bool },
    Ident(String),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Reads a Python string body starting at the opening quote `cs[i]`;
/// returns (value, index after it, line after it).
fn read_py_string(cs: &[char], i: usize, mut line: usize, raw: bool) -> (String, usize, usize) {
    let q = cs[i];
    let triple = cs.get(i + 1) == Some(&q) && cs.get(i + 2) == Some(&q);
    let mut j = if triple { i + 3 } else { i + 1 };
    let mut v = String::new();
    while j < cs.len() {
        let c = cs[j];
        if triple {
            if c == q && cs.get(j + 1) == Some(&q) && cs.get(j + 2) == Some(&q) {
                return (v, j + 3, line);
            }
        } else if c == q {
            return (v, j + 1, line);
        } else if c == '\n' {
            return (v, j, line); // unterminated: stop at the line's end
        }
        if c == '\\' && j + 1 < cs.len() {
            let n = cs[j + 1];
            if n == '\n' {
                line += 1;
            }
            if raw {
                v.push('\\');
                v.push(n);
            } else {
                match n {
                    'n' => v.push('\n'),
                    't' => v.push('\t'),
                    '\n' => {}
                    '\\' | '\'' | '"' => v.push(n),
                    _ => {
                        v.push('\\');
                        v.push(n);
                    }
                }
            }
            j += 2;
            continue;
        }
        if c == '\n' {
            line += 1;
        }
        v.push(c);
        j += 1;
    }
    (v, j, line)
}

/// A small Python lexer: strings (all prefixes, triple quotes, adjacent
/// literals joined), names and punctuation; comments dropped.
fn tokenize(src: &str) -> Vec<Token> {
    let cs: Vec<char> = src.chars().collect();
    let mut out: Vec<Token> = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    // Bracket depth: a newline outside brackets ends a statement.
    let mut depth = 0usize;
    // Whether the next string literal continues the previous one
    // (`"a" "b"` on one logical line is one string).
    let mut join = false;
    while i < cs.len() {
        let c = cs[i];
        if c == '\n' {
            line += 1;
            i += 1;
            if depth == 0 {
                join = false;
            }
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '\\' && cs.get(i + 1) == Some(&'\n') {
            i += 2;
            line += 1;
            continue;
        }
        let mut string = None;
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < cs.len()
                && (cs[i].is_alphanumeric()
                    || cs[i] == '_'
                    || (cs[start].is_ascii_digit() && cs[i] == '.'))
            {
                i += 1;
            }
            let word: String = cs[start..i].iter().collect();
            let lw = word.to_ascii_lowercase();
            let prefix = matches!(
                lw.as_str(),
                "r" | "u" | "b" | "f" | "rb" | "br" | "fr" | "rf"
            );
            if prefix && i < cs.len() && (cs[i] == '"' || cs[i] == '\'') {
                string = Some((lw.contains('r'), lw.contains('f')));
            } else {
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
                join = false;
                continue;
            }
        } else if c == '"' || c == '\'' {
            string = Some((false, false));
        }
        let Some((raw, fstring)) = string else {
            match c {
                '[' | '(' | '{' => depth += 1,
                ']' | ')' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            join = false;
            i += 1;
            continue;
        };
        let (value, ni, nl) = read_py_string(&cs, i, line, raw);
        match out.last_mut() {
            Some(Token {
                tok:
                    Tok::Str {
                        value: v,
                        fstring: f,
                    },
                ..
            }) if join => {
                v.push_str(&value);
                *f |= fstring;
            }
            _ => out.push(Token {
                tok: Tok::Str { value, fstring },
                line,
            }),
        }
        join = true;
        i = ni;
        line = nl;
    }
    out
}

/// Parts of a variable name that mark a list of package names.
const PACKAGE_LIST_NAMES: [&str; 10] = [
    "packages",
    "package",
    "pkgs",
    "pkg",
    "requirements",
    "reqs",
    "req",
    "deps",
    "dependencies",
    "install",
];

fn names_packages(ident: &str) -> bool {
    ident
        .to_ascii_lowercase()
        .split('_')
        .any(|p| PACKAGE_LIST_NAMES.contains(&p))
}

fn is_pip_word(w: &str) -> bool {
    let base = w.rsplit('/').next().unwrap_or(w);
    matches!(base, "pip" | "pip3") || base.starts_with("pip3.")
}

/// A group element as an argument.
fn element_arg(toks: &[Token]) -> Option<Arg> {
    match toks {
        [] => None,
        [Token {
            tok: Tok::Str { value, fstring },
            ..
        }] if !(*fstring && value.contains('{')) => Some(Arg::Literal(value.clone())),
        _ => {
            let mut t = String::new();
            for tok in toks {
                match &tok.tok {
                    Tok::Str { value, .. } => {
                        let _ = write!(t, "{value:?}");
                    }
                    Tok::Ident(s) => {
                        if t.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                            t.push(' ');
                        }
                        t.push_str(s);
                    }
                    Tok::Punct(c) => t.push(*c),
                }
            }
            if t.chars().count() > 60 {
                t = t.chars().take(57).collect::<String>() + "...";
            }
            Some(Arg::Computed(t))
        }
    }
}

/// Splits shell words (quotes group, no expansion); stops at `&&`, `;`, `|`, `>`.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut has = false;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                has = true;
            }
            None if c.is_whitespace() => {
                if has || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            None if matches!(c, ';' | '|' | '&' | '>' | '<') && cur.is_empty() && !has => break,
            None if matches!(c, ';' | '|' | '&') => {
                words.push(std::mem::take(&mut cur));
                return words;
            }
            None => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Finds pip installs and package lists in install.py's source.
fn scan_install_py(src: &str) -> Vec<FoundHint> {
    let toks = tokenize(src);
    let mut hints = Vec::new();
    let mentions_pip = src.contains("pip");

    // 1. Strings that hold a pip command line.
    for (k, t) in toks.iter().enumerate() {
        let Tok::Str { value, fstring } = &t.tok else {
            continue;
        };
        let words = shell_words(value);
        let Some(at) = words
            .windows(2)
            .position(|w| is_pip_word(&w[0]) && w[1] == "install")
        else {
            continue;
        };
        let mut args: Vec<Arg> = words[at + 2..]
            .iter()
            .map(|w| {
                let computed = (*fstring && w.contains('{'))
                    || w.contains("{}")
                    || w.contains("%s")
                    || w.contains("%(");
                if computed {
                    Arg::Computed(w.clone())
                } else {
                    Arg::Literal(w.clone())
                }
            })
            .collect();
        let continued = matches!(toks.get(k + 1).map(|t| &t.tok), Some(Tok::Punct('+' | '%')))
            || matches!(
                (toks.get(k + 1).map(|t| &t.tok), toks.get(k + 2).map(|t| &t.tok)),
                (Some(Tok::Punct('.')), Some(Tok::Ident(f))) if f == "format"
            );
        if continued && !args.iter().any(|a| matches!(a, Arg::Computed(_))) {
            args.push(Arg::Computed("(+ a computed part)".into()));
        }
        hints.push(FoundHint {
            line: t.line,
            what: Hint::Args(args),
        });
    }

    // 2. Bracketed groups: pip argument lists and lists of package names.
    let mut stack: Vec<usize> = Vec::new();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Punct('[' | '(' | '{') => stack.push(k),
            Tok::Punct(']' | ')' | '}') => {
                if let Some(open) = stack.pop() {
                    groups.push((open, k));
                }
            }
            _ => {}
        }
    }
    groups.sort_unstable();
    for (open, close) in groups {
        let Tok::Punct(kind) = toks[open].tok else {
            continue;
        };
        if kind == '{' {
            continue;
        }
        let mut elems: Vec<Vec<Token>> = vec![Vec::new()];
        let mut depth = 0i32;
        for t in &toks[open + 1..close] {
            match t.tok {
                Tok::Punct('[' | '(' | '{') => depth += 1,
                Tok::Punct(']' | ')' | '}') => depth -= 1,
                Tok::Punct(',') if depth == 0 => {
                    elems.push(Vec::new());
                    continue;
                }
                _ => {}
            }
            if let Some(last) = elems.last_mut() {
                last.push(t.clone());
            }
        }
        let args: Vec<Arg> = elems.iter().filter_map(|e| element_arg(e)).collect();
        let line = toks[open].line;
        let install_at = args
            .iter()
            .position(|a| matches!(a, Arg::Literal(s) if s == "install"));
        if let Some(at) = install_at {
            let pip_before = args[..at]
                .iter()
                .any(|a| matches!(a, Arg::Literal(s) if is_pip_word(s)));
            // `pip.main(["install", ...])`, `run_pip(["install", ...])`.
            let pip_call = at == 0
                && toks[open.saturating_sub(4)..open].iter().any(
                    |t| matches!(&t.tok, Tok::Ident(s) if s.to_ascii_lowercase().contains("pip")),
                );
            if pip_before || pip_call {
                hints.push(FoundHint {
                    line,
                    what: Hint::Args(args[at + 1..].to_vec()),
                });
                continue;
            }
        }
        // `packages = [...]`, `for pkg in [...]`.
        if !mentions_pip || args.is_empty() {
            continue;
        }
        let named = match (
            open.checked_sub(2).map(|k| &toks[k].tok),
            open.checked_sub(1).map(|k| &toks[k].tok),
        ) {
            (Some(Tok::Ident(name)), Some(Tok::Punct('='))) => names_packages(name),
            (Some(Tok::Ident(var)), Some(Tok::Ident(kw))) if kw == "in" => {
                open >= 3
                    && matches!(&toks[open - 3].tok, Tok::Ident(f) if f == "for")
                    && names_packages(var)
            }
            _ => false,
        };
        if !named {
            continue;
        }
        let all_packages = args.iter().all(|a| match a {
            Arg::Literal(s) => {
                !s.starts_with('-') && matches!(classify(s), Class::Dep(r) if r.name.is_some())
            }
            Arg::Computed(_) => false,
        });
        if all_packages {
            for a in args {
                if let Arg::Literal(s) = a {
                    hints.push(FoundHint {
                        line,
                        what: Hint::Package(s),
                    });
                }
            }
        }
    }
    hints.sort_by_key(|h| h.line);
    hints
}

// ---- import torch ------------------------------------------------------------------

/// `import torch` / `from torchvision import ...` sites in the pack's `.py`
/// files (hidden folders, `__pycache__`, `node_modules` and venvs skipped).
fn scan_torch_imports(dir: &Path) -> Vec<Inferred<String>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    let mut files: Vec<PathBuf> = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            visited += 1;
            if visited > MAX_SCAN_ENTRIES {
                break;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                let skip = name.starts_with('.')
                    || matches!(
                        name.as_str(),
                        "__pycache__" | "node_modules" | "venv" | "site-packages"
                    );
                if !skip {
                    stack.push(e.path());
                }
            } else if ft.is_file() && name.ends_with(".py") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    // Top-level files first: `__init__.py`, `nodes.py`.
    files.sort_by_key(|f| {
        f.strip_prefix(dir)
            .map(|r| r.components().count())
            .unwrap_or(usize::MAX)
    });
    for f in files {
        if found.len() >= MAX_EVIDENCE {
            break;
        }
        if std::fs::metadata(&f)
            .map(|m| m.len() > MAX_SCAN_BYTES)
            .unwrap_or(true)
        {
            continue;
        }
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if let Some(stmt) = torch_import(line) {
                let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
                found.push(Inferred::new(stmt, format!("{rel}:{}", i + 1)));
                break; // one site per file
            }
        }
    }
    found
}

/// `Some("import torch")` when the line imports torch, torchvision or torchaudio.
fn torch_import(line: &str) -> Option<String> {
    let l = line.trim();
    let root = |m: &str| m.split('.').next().unwrap_or("").trim().to_string();
    if let Some(rest) = l.strip_prefix("import ") {
        for item in rest.split(',') {
            let module = item.split_whitespace().next().unwrap_or("");
            if TORCH_MODULES.contains(&root(module).as_str()) {
                return Some(format!("import {module}"));
            }
        }
    } else if let Some(rest) = l.strip_prefix("from ") {
        let module = rest.split_whitespace().next().unwrap_or("");
        if TORCH_MODULES.contains(&root(module).as_str()) && rest.contains(" import") {
            return Some(format!("from {module} import ..."));
        }
    }
    None
}

// ---- writing -------------------------------------------------------------------------

/// A YAML scalar: plain when that reads back the same, else double-quoted
/// (JSON string syntax is valid YAML).
fn scalar(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-=<>!~,+/@*[]:".contains(c))
        && !s.ends_with(':')
        && s.parse::<f64>().is_err()
        && !s
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// Always quoted (a version such as `1.0` must stay a string).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// One line of comment text: no control characters.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn render(r: &MigrateReport) -> String {
    let mut y = String::new();
    let from = if r.sources.is_empty() {
        "the pack's folder".to_string()
    } else {
        r.sources.join(", ")
    };
    let _ = writeln!(
        y,
        "# Written by `nodecell migrate` from {}.",
        comment(&from)
    );
    let _ = writeln!(
        y,
        "# Review it: entries marked \"please check\" are guesses; what could not be inferred is listed at the end."
    );
    let with = |v: &Inferred<String>| match &v.note {
        Some(n) => comment(&format!("{}; {n}", v.from)),
        None => comment(&v.from),
    };
    let _ = writeln!(y, "name: {}  # {}", scalar(&r.name.value), with(&r.name));
    if let Some(v) = &r.version {
        let _ = writeln!(y, "version: {}  # {}", quoted(&v.value), with(v));
    }
    let _ = writeln!(
        y,
        "isolated: {}  # {}",
        r.isolated.value,
        comment(&r.isolated.from)
    );
    let _ = writeln!(
        y,
        "share_torch: {}  # {}",
        r.share_torch.value,
        comment(&r.share_torch.from)
    );
    if r.dependencies.is_empty() {
        let _ = writeln!(y, "dependencies: []");
    } else {
        let _ = writeln!(y, "dependencies:");
        for d in &r.dependencies {
            let _ = writeln!(y, "  - {}  # {}", scalar(&d.value), with(d));
        }
    }
    if let Some(u) = &r.index_url {
        let _ = writeln!(y, "index_url: {}  # {}", scalar(&u.value), with(u));
    }
    for (key, list) in [
        ("extra_index_urls", &r.extra_index_urls),
        ("find_links", &r.find_links),
    ] {
        if !list.is_empty() {
            let _ = writeln!(y, "{key}:");
            for u in list {
                let _ = writeln!(y, "  - {}  # {}", scalar(&u.value), with(u));
            }
        }
    }
    let left: Vec<&Finding> = r.dropped.iter().chain(&r.not_inferred).collect();
    if !left.is_empty() {
        let _ = writeln!(y, "\n# Left out:");
        for f in left {
            let text = if f.text.is_empty() {
                String::new()
            } else {
                format!("{}  ", f.text)
            };
            let _ = writeln!(
                y,
                "#   {}({}): {}",
                comment(&text),
                comment(&f.from),
                comment(&f.message)
            );
        }
    }
    y
}

impl fmt::Display for MigrateReport {
    /// A human summary (what `nodecell migrate` prints on stderr).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.written {
            let how = if self.replaced {
                " (replaced the previous one)"
            } else {
                ""
            };
            writeln!(f, "wrote {}{how}", self.manifest_path.display())?;
        } else {
            writeln!(f, "dry run: {} not written", self.manifest_path.display())?;
        }
        if !self.sources.is_empty() {
            writeln!(f, "read: {}", self.sources.join(", "))?;
        }
        let note = |n: &Option<String>| n.as_ref().map(|n| format!("; {n}")).unwrap_or_default();
        writeln!(
            f,
            "name: {} ({}{})",
            self.name.value,
            self.name.from,
            note(&self.name.note)
        )?;
        if let Some(v) = &self.version {
            writeln!(f, "version: {} ({})", v.value, v.from)?;
        }
        writeln!(
            f,
            "isolated: {} ({})",
            self.isolated.value, self.isolated.from
        )?;
        writeln!(
            f,
            "share_torch: {} ({})",
            self.share_torch.value, self.share_torch.from
        )?;
        writeln!(f, "dependencies ({}):", self.dependencies.len())?;
        for d in &self.dependencies {
            writeln!(f, "  {}  ({}{})", d.value, d.from, note(&d.note))?;
        }
        if let Some(u) = &self.index_url {
            writeln!(f, "index_url: {} ({})", u.value, u.from)?;
        }
        for (key, list) in [
            ("extra_index_urls", &self.extra_index_urls),
            ("find_links", &self.find_links),
        ] {
            if !list.is_empty() {
                writeln!(f, "{key}:")?;
                for u in list {
                    writeln!(f, "  {}  ({})", u.value, u.from)?;
                }
            }
        }
        let section = |f: &mut fmt::Formatter, title: &str, list: &[Finding]| -> fmt::Result {
            if list.is_empty() {
                return Ok(());
            }
            writeln!(f, "{title} ({}):", list.len())?;
            for x in list {
                if x.text.is_empty() {
                    writeln!(f, "  {}: {}", x.from, x.message)?;
                } else {
                    writeln!(f, "  {}: {}: {}", x.from, x.text, x.message)?;
                }
            }
            Ok(())
        };
        section(f, "left out, shared with the host", &self.dropped)?;
        section(f, "please check", &self.check)?;
        section(f, "could not infer", &self.not_inferred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack folder with the given files.
    fn pack(name: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, text) in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        (t, dir)
    }

    fn deps(r: &MigrateReport) -> Vec<&str> {
        r.dependencies.iter().map(|d| d.value.as_str()).collect()
    }

    #[track_caller]
    fn finding<'a>(list: &'a [Finding], kind: FindingKind, text_has: &str) -> &'a Finding {
        list.iter()
            .find(|f| f.kind == kind && f.text.contains(text_has))
            .unwrap_or_else(|| panic!("no {kind:?} finding about {text_has:?} in {list:#?}"))
    }

    #[test]
    fn pip_line_rules() {
        let lines = logical_lines("a \\\n  b\n# c \\\nd\\\n# x\ne\r\n");
        assert_eq!(
            lines,
            vec![
                (1, "a b".to_string()),
                (3, " # c \\".to_string()),
                (4, "d # x".to_string()),
                (6, "e".to_string())
            ]
        );
        assert_eq!(strip_comment("numpy  # pinned"), "numpy  ");
        assert_eq!(strip_comment("# all"), "");
        assert_eq!(
            strip_comment("git+https://h/x.git#egg=x"),
            "git+https://h/x.git#egg=x"
        );
        assert_eq!(split_option("-r more.txt"), ("-r", Some("more.txt")));
        assert_eq!(split_option("-rmore.txt"), ("-r", Some("more.txt")));
        assert_eq!(
            split_option("--index-url=https://x/simple"),
            ("--index-url", Some("https://x/simple"))
        );
        assert_eq!(
            split_option("--extra-index-url   https://x/simple "),
            ("--extra-index-url", Some("https://x/simple"))
        );
        assert_eq!(split_option("--pre"), ("--pre", None));
        assert_eq!(split_option("-"), ("-", None));
        assert_eq!(
            split_trailing_options("a==1 --hash=sha256:00 --hash=sha256:11"),
            ("a==1", Some("--hash=sha256:00 --hash=sha256:11"))
        );
        assert_eq!(
            split_trailing_options("a-b==1 ; python_version > \"3\""),
            ("a-b==1 ; python_version > \"3\"", None)
        );
    }

    #[test]
    fn requirements_txt_pack() {
        let (_t, dir) = pack(
            "ComfyUI-Req Pack",
            &[
                (
                    "requirements.txt",
                    "# deps\n\
                     numpy>=1.24,<2  # core\n\
                     opencv-python-headless \\\n    >=4.8\n\
                     -r extra/more.txt\n\
                     --extra-index-url https://download.example.org/whl/cu121\n\
                     --index-url=https://pypi.example.org/simple\n\
                     -f https://example.org/wheels/\n\
                     git+https://github.com/org/repo.git@v1.0#egg=repo\n\
                     pywin32 ; sys_platform == \"win32\"\n\
                     -e .\n\
                     ./vendor/pkg\n\
                     numpy=1.2\n\
                     scipy==1.11.4 --hash=sha256:abcd\n\
                     -c constraints.txt\n\
                     --pre\n\
                     -r missing.txt\n",
                ),
                ("extra/more.txt", "pillow>=10\n-r ../requirements.txt\n"),
            ],
        );
        let r = infer(&dir).unwrap();
        assert_eq!(r.name.value, "ComfyUI-Req_Pack");
        assert!(r.name.note.is_some());
        assert_eq!(r.name.from, "folder name");
        assert_eq!(
            deps(&r),
            vec![
                "numpy>=1.24,<2",
                "opencv-python-headless >=4.8",
                "pillow>=10",
                "git+https://github.com/org/repo.git@v1.0#egg=repo",
                "pywin32 ; sys_platform == \"win32\"",
                "scipy==1.11.4",
            ]
        );
        assert_eq!(r.dependencies[2].from, "extra/more.txt:1");
        assert_eq!(r.dependencies[1].from, "requirements.txt:3");
        assert_eq!(
            r.index_url.as_ref().unwrap().value,
            "https://pypi.example.org/simple"
        );
        assert_eq!(
            r.extra_index_urls[0].value,
            "https://download.example.org/whl/cu121"
        );
        assert_eq!(r.find_links[0].value, "https://example.org/wheels/");
        assert!(!r.share_torch.value && r.isolated.value);
        let n = &r.not_inferred;
        assert_eq!(
            finding(n, FindingKind::Editable, "-e .").from,
            "requirements.txt:11"
        );
        finding(n, FindingKind::LocalPath, "./vendor/pkg");
        let bad = finding(n, FindingKind::Unparseable, "numpy=1.2");
        assert!(
            bad.message.contains("expected a valid version operator"),
            "{bad:?}"
        );
        finding(n, FindingKind::UnsupportedOption, "--hash=sha256:abcd");
        finding(n, FindingKind::UnsupportedOption, "-c constraints.txt");
        finding(n, FindingKind::UnsupportedOption, "--pre");
        finding(n, FindingKind::Include, "-r missing.txt");
        // In file order, line order.
        let lines: Vec<usize> = n
            .iter()
            .map(|f| f.from.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{n:#?}");
        assert_eq!(r.sources, vec!["requirements.txt", "extra/more.txt"]);
        // The text says the same as the report (infer checked it too).
        let m = parse_manifest(
            &r.manifest_path,
            &r.manifest,
            ManifestFormat::Manifest,
            &dir,
        )
        .unwrap();
        assert_eq!(m.dependencies.len(), 6);
        assert!(
            r.manifest.contains("#   numpy=1.2  (requirements.txt:13)"),
            "{}",
            r.manifest
        );
    }

    #[test]
    fn proves_conflicts_and_only_those() {
        let s = |v: &[(&str, &str)]| -> Vec<(Op, String)> {
            v.iter()
                .map(|(o, v)| (Op::split(o).unwrap().0, v.to_string()))
                .collect()
        };
        for bad in [
            s(&[("==", "1.26.4"), (">=", "2")]),
            s(&[(">=", "2"), ("<", "2")]),
            s(&[(">", "2"), ("<=", "2")]),
            s(&[("~=", "1.4"), (">=", "2")]),
            s(&[("~=", "1.4.2"), ("<", "1.4")]),
            s(&[("!=", "1.0"), ("==", "1.0")]),
            s(&[("==", "1.*"), ("==", "2.0")]),
            s(&[("===", "a"), ("===", "b")]),
        ] {
            assert!(unsatisfiable(&bad), "{bad:?}");
        }
        for ok in [
            s(&[(">=", "2"), ("<", "3"), ("==", "2.5")]),
            s(&[(">=", "2"), ("<=", "2")]),
            s(&[("~=", "1.4"), ("<", "1.9")]),
            s(&[("!=", "1.0"), (">=", "0.5")]),
            s(&[("==", "1.*"), ("==", "1.2")]),
            s(&[(">=", "1"), ("!=", "1.5")]),
        ] {
            assert!(!unsatisfiable(&ok), "{ok:?}");
        }

        let (_t, dir) = pack(
            "c",
            &[
                ("requirements.txt", "numpy==1.26.4\npillow>=9\nfoo @ https://h/foo-1.whl\n"),
                (
                    "pyproject.toml",
                    "[project]\nname='c'\ndependencies=['numpy>=2', 'pillow<12', 'numpy==1.26.4', 'foo @ https://h/foo-2.whl']\n",
                ),
            ],
        );
        let r = infer(&dir).unwrap();
        assert_eq!(
            deps(&r),
            vec![
                "numpy==1.26.4",
                "pillow>=9",
                "foo @ https://h/foo-1.whl",
                "pillow<12"
            ]
        );
        let c = finding(&r.not_inferred, FindingKind::Conflict, "numpy>=2");
        assert_eq!(c.from, "pyproject.toml: project.dependencies[0]");
        assert!(
            c.message.contains("`numpy==1.26.4` (requirements.txt:1)"),
            "{c:?}"
        );
        finding(&r.not_inferred, FindingKind::Conflict, "foo-2.whl");
    }

    #[test]
    fn pyproject_with_comfy_isolation() {
        let (_t, dir) = pack(
            "folder-name",
            &[(
                "pyproject.toml",
                "[project]\nname = \"comfyui-iso\"\nversion = \"1.0\"\ndependencies = [\"numpy<2\", \"torch>=2.1\", 3]\n\
                 [tool.comfy]\nPublisherId = \"me\"\nDisplayName = \"Iso\"\n\
                 [tool.comfy.isolation]\ncan_isolate = true\nshare_torch = true\n\
                 extra_index_urls = [\"https://download.pytorch.org/whl/cu121\", \"not a url\"]\n\
                 package_manager = \"uv\"\n",
            )],
        );
        let r = infer(&dir).unwrap();
        assert_eq!(r.name.value, "comfyui-iso");
        assert_eq!(r.name.from, "pyproject.toml: project.name");
        assert_eq!(r.version.as_ref().unwrap().value, "1.0");
        assert!(r.isolated.value);
        assert_eq!(
            r.isolated.from,
            "pyproject.toml: tool.comfy.isolation.can_isolate"
        );
        assert!(r.share_torch.value);
        assert_eq!(
            r.share_torch.from,
            "pyproject.toml: tool.comfy.isolation.share_torch"
        );
        assert_eq!(deps(&r), vec!["numpy<2"]);
        finding(&r.dropped, FindingKind::SharedTorch, "torch>=2.1");
        assert_eq!(r.extra_index_urls.len(), 1);
        finding(&r.not_inferred, FindingKind::Unparseable, "not a url");
        finding(&r.not_inferred, FindingKind::Unparseable, "3");
        finding(&r.check, FindingKind::Ignored, "package_manager");
        finding(
            &r.check,
            FindingKind::SharedTorch,
            "download.pytorch.org/whl/cu121",
        );
        // The version stays a string (YAML would read 1.0 as a number).
        assert!(r.manifest.contains("version: \"1.0\""), "{}", r.manifest);

        let (_t, dir) = pack(
            "p",
            &[
                (
                    "pyproject.toml",
                    "[project]\nname='p'\ndependencies=['torch']\n[tool.comfy.isolation]\ncan_isolate=false\nshare_torch=false\n",
                ),
                ("nodes.py", "import torch\n"),
            ],
        );
        let r = infer(&dir).unwrap();
        assert!(!r.isolated.value && !r.share_torch.value);
        assert_eq!(deps(&r), vec!["torch"]);
        finding(&r.check, FindingKind::SharedTorch, "share_torch = false");
        finding(&r.check, FindingKind::Ignored, "can_isolate = false");

        let (_t, dir) = pack("broken", &[("pyproject.toml", "[project\nname='x'\n")]);
        let r = infer(&dir).unwrap();
        assert_eq!(r.name.value, "broken");
        let f = finding(&r.not_inferred, FindingKind::Unreadable, "");
        assert_eq!(f.from, "pyproject.toml:1");
    }

    #[test]
    fn torch_is_shared_and_companions_unpinned() {
        let (_t, dir) = pack(
            "t",
            &[(
                "requirements.txt",
                "torch==2.1.0+cu118\ntorchvision==0.16.0\ntorchaudio>=2.0\nxformers==0.0.23 ; platform_system == \"Linux\"\n\
                 kornia\nhttps://download.pytorch.org/whl/cu118/torch-2.1.0%2Bcu118-cp311-cp311-linux_x86_64.whl\n",
            )],
        );
        let r = infer(&dir).unwrap();
        assert!(r.share_torch.value);
        assert!(
            r.share_torch.from.contains("requirements.txt:1"),
            "{}",
            r.share_torch.from
        );
        assert_eq!(
            deps(&r),
            vec![
                "torchvision",
                "torchaudio>=2.0",
                "xformers ; platform_system == \"Linux\"",
                "kornia"
            ]
        );
        assert_eq!(r.dropped.len(), 2, "{:#?}", r.dropped);
        finding(&r.check, FindingKind::TorchCompanion, "torchvision==0.16.0");
        finding(&r.check, FindingKind::TorchCompanion, "xformers==0.0.23");
        assert!(r.dependencies[0]
            .note
            .as_ref()
            .unwrap()
            .contains("was torchvision==0.16.0"));

        // `import torch` alone is enough; nothing else is touched.
        let (_t, dir) = pack(
            "imp",
            &[
                ("requirements.txt", "numpy\n"),
                ("__init__.py", "from .nodes import NODE_CLASS_MAPPINGS\n"),
                ("nodes/impl.py", "import os, torch.nn.functional as F\n"),
                (".venv/lib/x.py", "import torch\n"),
            ],
        );
        let r = infer(&dir).unwrap();
        assert!(r.share_torch.value);
        assert_eq!(r.torch_evidence.len(), 1);
        assert_eq!(r.torch_evidence[0].from, "nodes/impl.py:1");
        assert_eq!(r.torch_evidence[0].value, "import torch.nn.functional");
        assert_eq!(deps(&r), vec!["numpy"]);

        let (_t, dir) = pack(
            "none",
            &[(
                "nodes.py",
                "# import torch\nimport torchsde_like\nx = 'from torch import nn'\n",
            )],
        );
        let r = infer(&dir).unwrap();
        assert!(!r.share_torch.value, "{:?}", r.torch_evidence);
        finding(&r.check, FindingKind::Ignored, "");
    }

    #[test]
    fn torch_imports() {
        assert_eq!(
            torch_import("import torch").as_deref(),
            Some("import torch")
        );
        assert_eq!(
            torch_import("  import numpy as np, torchvision").as_deref(),
            Some("import torchvision")
        );
        assert_eq!(
            torch_import("from torch import nn").as_deref(),
            Some("from torch import ...")
        );
        assert_eq!(
            torch_import("from torchaudio.functional import x").as_deref(),
            Some("from torchaudio.functional import ...")
        );
        assert_eq!(torch_import("import torchsde"), None);
        assert_eq!(torch_import("from .torch import x"), None);
        assert_eq!(torch_import("importtorch"), None);
    }

    #[test]
    fn install_py_hints() {
        let src = r#"
import subprocess, sys, os
# pip install commented-out
req = os.path.join(os.path.dirname(__file__), "requirements.txt")
subprocess.check_call([sys.executable, "-s", "-m", "pip", "install", "-r", req])
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--upgrade', 'opencv-python>=4.8', "--index-url", "https://idx.example.org/simple"])
os.system("pip install 'scikit-image>=0.21' --no-deps && echo done")
os.system(f"{sys.executable} -m pip install insightface==0.7.3")
os.system("pip install " + extra_pkg)
pip.main(["install", "onnxruntime"])
subprocess.run(["uv", "pip", "install", *more])
packages = [
    "segment-anything",
    "timm>=0.9",
]
for pkg in ("ultralytics",):
    subprocess.check_call([sys.executable, "-m", "pip", "install", pkg])
required_dirs = ["models", "output"]
subprocess.run(["pip", "install", "."])
"#;
        let (_t, dir) = pack(
            "ip",
            &[("install.py", src), ("requirements.txt", "numpy\n")],
        );
        let r = infer(&dir).unwrap();
        assert_eq!(
            deps(&r),
            vec![
                "numpy",
                "opencv-python>=4.8",
                "scikit-image>=0.21",
                "insightface==0.7.3",
                "onnxruntime",
                "segment-anything",
                "timm>=0.9",
                "ultralytics",
            ]
        );
        for d in &r.dependencies[1..] {
            assert_eq!(d.note.as_deref(), Some(INSTALL_PY_NOTE), "{d:?}");
            assert!(d.from.starts_with("install.py:"), "{d:?}");
        }
        assert_eq!(r.dependencies[1].from, "install.py:6");
        assert_eq!(r.dependencies[5].from, "install.py:12");
        assert!(r.index_url.is_none());
        let idx = &r.extra_index_urls[0];
        assert_eq!(idx.value, "https://idx.example.org/simple");
        assert!(
            idx.note.as_ref().unwrap().ends_with(INSTALL_PY_NOTE),
            "{idx:?}"
        );
        assert!(
            idx.note.as_ref().unwrap().contains("was --index-url"),
            "{idx:?}"
        );
        finding(&r.check, FindingKind::InstallPy, "opencv-python>=4.8");
        finding(&r.check, FindingKind::InstallPy, "-r req");
        finding(&r.not_inferred, FindingKind::InstallPy, "computed");
        finding(&r.not_inferred, FindingKind::InstallPy, "*more");
        finding(&r.not_inferred, FindingKind::LocalPath, "pip install .");
        assert!(!deps(&r).contains(&"models"));
        assert!(r
            .check
            .iter()
            .any(|f| f.from == "install.py" && f.message.contains("does not run it")));
    }

    #[test]
    fn python_lexer() {
        let toks = tokenize("x = r'a\\b' \"c\" f'{y}'  # 'no'\n'''m\nl''' + b\"z\"");
        let strs: Vec<(String, bool, usize)> = toks
            .iter()
            .filter_map(|t| match &t.tok {
                Tok::Str { value, fstring } => Some((value.clone(), *fstring, t.line)),
                _ => None,
            })
            .collect();
        assert_eq!(
            strs,
            vec![
                ("a\\bc{y}".into(), true, 1),
                ("m\nl".into(), false, 2),
                ("z".into(), false, 3)
            ]
        );
        assert_eq!(shell_words("a 'b c' \"d\" e;f"), vec!["a", "b c", "d", "e"]);
        assert_eq!(shell_words("x && y"), vec!["x"]);
    }

    #[test]
    fn names() {
        assert_eq!(sanitize_name("ComfyUI-Impact-Pack"), "ComfyUI-Impact-Pack");
        assert_eq!(sanitize_name("My Pack (v2)!"), "My_Pack_v2");
        assert_eq!(sanitize_name("  .hidden_"), "hidden");
        assert_eq!(sanitize_name("日本"), "pack");
        assert_eq!(
            wheel_name("https://h/whl/torch-2.1.0%2Bcu118-cp311-none.whl#sha256=x").as_deref(),
            Some("torch")
        );
        assert_eq!(wheel_name("https://h/x.tar.gz"), None);
    }

    #[test]
    fn awkward_values_round_trip() {
        // Names YAML would read as other types, markers with both quote
        // kinds, URLs with fragments and `@`.
        for name in ["true", "1.0", "null", "123", "yes"] {
            let (_t, dir) = pack(
                "x",
                &[(
                    "pyproject.toml",
                    &format!(
                        "[project]\nname = '{name}'\nversion = '2.10'\ndependencies = [\"a[b,c]>=1; python_version >= '3.9' and os_name == \\\"posix\\\"\", 'pkg @ git+https://h/r.git@v1#egg=pkg&subdirectory=s', 'x~=1.4.2']\n"
                    ),
                )],
            );
            let r = infer(&dir).unwrap();
            assert_eq!(r.name.value, name);
            let m = parse_manifest(
                &r.manifest_path,
                &r.manifest,
                ManifestFormat::Manifest,
                &dir,
            )
            .unwrap();
            assert_eq!(m.name, name);
            assert_eq!(m.version.as_deref(), Some("2.10"));
            assert_eq!(m.dependencies.len(), 3, "{}", r.manifest);
        }
    }

    #[test]
    fn utf16_and_bom() {
        let (text, lossy) = decode(b"\xef\xbb\xbfnumpy\n");
        assert_eq!((text.as_str(), lossy), ("numpy\n", false));
        let mut b = vec![0xff, 0xfe];
        for u in "numpy==1.0\r\n".encode_utf16() {
            b.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(decode(&b), ("numpy==1.0\r\n".to_string(), false));
        assert!(decode(b"nump\xff\n").1);
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("requirements.txt"), &b).unwrap();
        let r = infer(t.path()).unwrap();
        assert_eq!(deps(&r), vec!["numpy==1.0"]);
    }

    #[test]
    fn writes_refuses_forces_and_dry_runs() {
        let (_t, dir) = pack("w", &[("requirements.txt", "numpy>=1.24\ntorch\n")]);
        let dry = migrate(
            &dir,
            MigrateOptions {
                dry_run: true,
                force: false,
            },
        )
        .unwrap();
        assert!(!dry.written && !dir.join(MANIFEST_FILE).exists());
        let r = migrate(&dir, MigrateOptions::default()).unwrap();
        assert!(r.written && !r.replaced);
        assert_eq!(
            std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap(),
            dry.manifest
        );
        let p = Pack::load(&dir).unwrap();
        assert_eq!(p.manifest.name, "w");
        assert!(p.manifest.share_torch && p.manifest.isolated);
        assert_eq!(p.manifest.dependencies[0].as_written(), "numpy>=1.24");

        std::fs::write(dir.join(MANIFEST_FILE), "name: mine\n").unwrap();
        let e = migrate(&dir, MigrateOptions::default()).unwrap_err();
        assert!(matches!(e, MigrateError::Exists { .. }), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap(),
            "name: mine\n"
        );
        // A dry run still works, and still writes nothing.
        migrate(
            &dir,
            MigrateOptions {
                dry_run: true,
                force: false,
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap(),
            "name: mine\n"
        );
        std::fs::write(
            dir.join(MANIFEST_FILE),
            "name: mine\nsandbox:\n  max_memory: 1GB\n",
        )
        .unwrap();
        let r = migrate(
            &dir,
            MigrateOptions {
                force: true,
                dry_run: false,
            },
        )
        .unwrap();
        assert!(r.written && r.replaced);
        let lost = r
            .check
            .iter()
            .find(|f| f.from == MANIFEST_FILE)
            .expect("sandbox settings reported");
        assert_eq!(lost.text, "sandbox");
        assert_eq!(Pack::load(&dir).unwrap().manifest.name, "w");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        // A manifest.yml is a manifest too.
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        std::fs::write(dir.join("manifest.yml"), "name: yml\n").unwrap();
        let e = migrate(&dir, MigrateOptions::default()).unwrap_err();
        assert!(e.to_string().contains("manifest.yml already exists"), "{e}");
        let r = migrate(
            &dir,
            MigrateOptions {
                force: true,
                dry_run: false,
            },
        )
        .unwrap();
        assert!(
            r.check.iter().any(|f| f.from == "manifest.yml"),
            "{:?}",
            r.check
        );
        assert_eq!(Pack::load(&dir).unwrap().manifest.name, "w");

        let e = migrate(&dir.join("requirements.txt"), MigrateOptions::default()).unwrap_err();
        assert!(matches!(e, MigrateError::NotAPack { .. }), "{e}");
    }

    #[test]
    fn never_writes_an_unparseable_manifest() {
        // Lines put together from pieces of the requirement grammar (and
        // garbage), in every source: inference reports what it cannot use,
        // it never fails or writes something the manifest parser rejects.
        const PIECES: [&str; 48] = [
            "numpy",
            "a",
            "b.c",
            "x_y",
            "torch",
            "torchvision",
            "[",
            "]",
            ",",
            "extra",
            ">=",
            "==",
            "<",
            "~=",
            "1.0",
            "2",
            "1.*",
            " ; ",
            "python_version",
            " < ",
            "'3.9'",
            "\"3\"",
            " and ",
            " @ ",
            "git+https://h/r.git",
            "#egg=x",
            " # c",
            " ",
            "\\\n",
            "\n",
            "\n",
            "\n",
            "-r ",
            "-e ",
            "--hash=x",
            ":",
            ": ",
            "' '",
            "*",
            "!",
            "&",
            "{",
            "}",
            "|",
            ">",
            "é",
            "\"",
            "'",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let t = tempfile::tempdir().unwrap();
        let mut written = 0;
        for i in 0..200 {
            let mut gen = |pieces: u64| -> String {
                let n = next() % pieces;
                (0..n)
                    .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                    .collect()
            };
            let dir = t.path().join(format!("p{i}"));
            std::fs::create_dir(&dir).unwrap();
            let req = gen(60);
            let install = format!(
                "subprocess.run(['pip', 'install', {:?}])\nos.system({:?})\npackages = [{:?}]\n",
                gen(8),
                format!("pip install {}", gen(8)),
                gen(6)
            );
            let pyproject = format!(
                "[project]\nname = {:?}\nversion = {:?}\ndependencies = [{:?}, {:?}]\n[tool.comfy.isolation]\nextra_index_urls = [{:?}]\n",
                gen(6),
                gen(4),
                gen(10),
                gen(10),
                gen(4)
            );
            std::fs::write(dir.join("requirements.txt"), &req).unwrap();
            std::fs::write(dir.join("install.py"), &install).unwrap();
            std::fs::write(dir.join("pyproject.toml"), &pyproject).unwrap();
            match infer(&dir) {
                Ok(r) => written += r.dependencies.len(),
                Err(e) => panic!("{e}\n--- requirements.txt\n{req}\n--- install.py\n{install}\n--- pyproject.toml\n{pyproject}"),
            }
        }
        // The generator does reach valid requirements.
        assert!(written > 100, "{written}");
    }
}
