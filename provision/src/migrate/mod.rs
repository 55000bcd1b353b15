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
//!
//! Layout, one idea per file: `app` (the host app's requirements), `abi`
//! (binaries built against numpy 1.x), `collect` (requirement collection and merging),
//! `pyproject` (`pyproject.toml`), `reqtxt` (the `requirements.txt` lexer),
//! `install_py` (the `install.py` tokenizer and scanner), `conflict` (the
//! PEP 440 conflict checker), `scan` (source scans), `yaml` (the writer),
//! `report` (what the user is told).

pub(crate) mod abi;
pub mod app;
mod collect;
pub(crate) mod conflict;
mod install_py;
mod pyproject;
mod report;
mod reqtxt;
mod scan;
#[cfg(test)]
mod tests;
mod yaml;

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::error::ManifestError;
use crate::manifest::{parse_manifest, Manifest, ManifestFormat, Pack, SandboxSettings};
use crate::requirement::{normalize_name, Requirement, Source};

use collect::{Collector, Dep, PyprojectInfo};
pub use report::{Finding, FindingKind, Inferred, MigrateReport};
use scan::{scan_folder_writes, scan_torch_imports};
use yaml::render;

/// The file `nodecell migrate` writes in the pack's folder.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// The distribution `share_torch` takes from the host instead of installing.
pub(super) const SHARED_BY_HOST: &str = "torch";
/// Requirements on these mean the pack needs torch.
const TORCH_FAMILY: [&str; 3] = ["torch", "torchvision", "torchaudio"];
/// Distributions built against one torch version: a pin on them pins torch.
pub(super) const TORCH_COMPANIONS: [&str; 3] = ["torchvision", "torchaudio", "xformers"];

/// The sandbox limits `migrate` writes as defaults (marked for review).
pub const DEFAULT_LIMITS: [(&str, &str); 4] = [
    ("network", "false"),
    ("max_memory", "8GB"),
    ("max_pids", "512"),
    ("timeout", "600"),
];

/// What `migrate` may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Replace an existing `manifest.yaml` (otherwise [`MigrateError::Exists`]).
    pub force: bool,
    /// Infer and check the manifest but write nothing.
    pub dry_run: bool,
    /// The host app's folder (its `requirements.txt` says what it provides);
    /// `None`: the app the pack sits in (`<app>/custom_nodes/<pack>`), if any.
    pub app: Option<PathBuf>,
}

/// The host app a pack in `dir` sits in: `<app>/custom_nodes/<pack>` where
/// `<app>` has a `requirements.txt` and a `folder_paths.py`.
pub fn detect_app(dir: &Path) -> Option<PathBuf> {
    let parent = dir.parent()?;
    if parent.file_name()? != "custom_nodes" {
        return None;
    }
    let app = parent.parent()?;
    (app.join("requirements.txt").is_file() && app.join("folder_paths.py").is_file())
        .then(|| app.to_path_buf())
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
    let mut report = infer_with(&dir, opts.app.as_deref())?;
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
/// parser. The host app is the one the pack sits in, if any ([`detect_app`]).
pub fn infer(dir: &Path) -> Result<MigrateReport, MigrateError> {
    infer_with(dir, None)
}

/// [`infer`] with the host app's folder given (`None`: detected).
pub fn infer_with(dir: &Path, app: Option<&Path>) -> Result<MigrateReport, MigrateError> {
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

    let mut deps = c.merge();
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
    numpy_abi(&mut deps, &mut c);
    for d in &deps {
        if let Source::Url(u) = &d.req.source {
            if let Some(vcs) = ["git+", "hg+", "svn+", "bzr+"]
                .iter()
                .find(|p| u.starts_with(**p))
            {
                let host = u[vcs.len()..]
                    .split("://")
                    .nth(1)
                    .and_then(|r| r.split(['/', '@', ':']).next())
                    .unwrap_or("its host");
                c.check.push(Finding {
                    kind: FindingKind::Vcs,
                    from: d.from.clone(),
                    text: d.req.as_written().to_string(),
                    message: format!(
                        "fetched with {} from {host} when the venv is built: provisioning needs network access to it (the sandbox itself stays offline); pin a commit (@<sha>) for a reproducible venv, or use a release from an index",
                        vcs.trim_end_matches('+')
                    ),
                });
            }
        }
    }

    // What the host app already provides: shared from the host.
    let app_dir = app.map(Path::to_path_buf).or_else(|| detect_app(&dir));
    let mut shared: Vec<Inferred<String>> = Vec::new();
    let mut app_info = None;
    if let Some(root) = &app_dir {
        let file = root.join("requirements.txt");
        let provided = app::requirement_names(&file);
        app_info = Some(Inferred::new(
            root.display().to_string(),
            if app.is_some() {
                "--app"
            } else {
                "the folder the pack sits in"
            },
        ));
        if provided.is_empty() {
            c.check.push(Finding {
                kind: FindingKind::AppProvided,
                from: file.display().to_string(),
                text: String::new(),
                message: "the host app's requirements could not be read: nothing written as shared"
                    .into(),
            });
        }
        let (app_deps, own): (Vec<Dep>, Vec<Dep>) =
            std::mem::take(&mut deps).into_iter().partition(|d| {
                d.req.name.as_ref().is_some_and(|n| provided.contains(n))
                    && matches!(d.req.source, Source::Index(_))
                    && d.note.as_deref().is_none_or(|n| !n.starts_with("added:"))
            });
        deps = own;
        for d in app_deps {
            shared.push(Inferred {
                value: d.req.as_written().to_string(),
                note: Some(
                    "provided by the host app: shared from the host, not reinstalled".into(),
                ),
                from: d.from,
            });
        }
    }
    let folder_writes = scan_folder_writes(&dir);
    for w in &folder_writes {
        c.check.push(Finding {
            kind: FindingKind::FolderWrite,
            from: w.from.clone(),
            text: w.value.clone(),
            message: "writes into the pack's own folder: isolated, such writes go to the pack's state layer (under nodecell's state folder, see `nodecell state`), never into this folder".into(),
        });
    }
    c.check.push(Finding {
        kind: FindingKind::Limits,
        from: "default".into(),
        text: DEFAULT_LIMITS
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        message: "sandbox limits written as defaults: review them (memory for the pack's models, per-call timeout for its slowest node)".into(),
    });
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
        shared,
        app: app_info,
        folder_writes,
        limits: DEFAULT_LIMITS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
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
        "shared",
        format!(
            "{:?}",
            r.shared.iter().map(|d| &d.value).collect::<Vec<_>>()
        ),
        format!(
            "{:?}",
            m.shared.iter().map(|d| d.as_written()).collect::<Vec<_>>()
        ),
    )?;
    let want = |k: &str| {
        r.limits
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    differ(
        "sandbox.network",
        want("network").unwrap_or_else(|| "false".into()),
        m.sandbox.network.to_string(),
    )?;
    differ(
        "sandbox.max_pids",
        format!("{:?}", want("max_pids").and_then(|v| v.parse::<u64>().ok())),
        format!("{:?}", m.sandbox.max_pids),
    )?;
    differ(
        "sandbox.timeout",
        format!(
            "{:?}",
            want("timeout")
                .and_then(|v| v.parse::<u64>().ok())
                .map(std::time::Duration::from_secs)
        ),
        format!("{:?}", m.sandbox.timeout),
    )?;
    differ(
        "sandbox.max_memory",
        want("max_memory").is_some().to_string(),
        m.sandbox.max_memory.is_some().to_string(),
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
pub(super) fn dist_name(r: &Requirement) -> Option<String> {
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

/// Adds `numpy<2` beside a pinned binary built against numpy 1.x (reported),
/// unless the pack keeps numpy below 2 already; a pack that also asks for
/// numpy 2 gets a conflict reported instead.
fn numpy_abi(deps: &mut Vec<Dep>, c: &mut Collector) {
    let hazards: Vec<(String, &str, String)> = deps
        .iter()
        .filter_map(|d| {
            abi::numpy1_only(&d.req).map(|first| (d.req.to_string(), first, d.from.clone()))
        })
        .collect();
    let Some((req, first, from)) = hazards.first().cloned() else {
        return;
    };
    if deps.iter().any(|d| abi::keeps_numpy1(&d.req)) {
        return;
    }
    if let Some(n2) = deps.iter().find(|d| abi::needs_numpy2(&d.req)) {
        c.not_inferred.push(Finding {
            kind: FindingKind::NumpyAbi,
            from: n2.from.clone(),
            text: n2.req.to_string(),
            message: format!(
                "conflicts with `{req}` ({from}): its wheels up to {first} are built against numpy 1.x and fail under numpy 2; unpin it or drop the numpy 2 requirement"
            ),
        });
        return;
    }
    let Ok(numpy) = Requirement::parse("numpy<2") else {
        return;
    };
    let why = format!(
        "added: `{req}` is a binary built against numpy 1.x (the first numpy-2 build is {first}); under numpy 2 it fails with `numpy.core.multiarray failed to import`"
    );
    c.check.push(Finding {
        kind: FindingKind::NumpyAbi,
        from: from.clone(),
        text: "numpy<2".into(),
        message: format!("{why}; remove both pins together when the pack moves to a newer build"),
    });
    deps.push(Dep {
        req: numpy,
        from,
        note: Some(why),
    });
}
