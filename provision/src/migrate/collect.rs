//! Requirement collection: reads `requirements.txt` (with its includes and
//! index options), the requirement hints of `install.py`, applies
//! `share_torch`, and merges duplicates and conflicts into the list written.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::conflict::unsatisfiable;
use super::install_py::{scan_install_py, Arg, Hint};
use super::reqtxt::{
    decode, logical_lines, split_option, split_trailing_options, strip_comment, PIP_VALUE_OPTIONS,
};
use super::{dist_name, Finding, FindingKind, Inferred, SHARED_BY_HOST, TORCH_COMPANIONS};
use crate::pep440::Op;
use crate::requirement::{Requirement, Source};

/// Deepest chain of `-r` includes followed.
const MAX_INCLUDE_DEPTH: usize = 16;
/// The note on every dependency read from install.py.
pub(super) const INSTALL_PY_NOTE: &str = "found in install.py, please check";

pub(super) struct Dep {
    pub(super) req: Requirement,
    pub(super) from: String,
    pub(super) note: Option<String>,
}

#[derive(Default)]
pub(super) struct PyprojectInfo {
    pub(super) name: Option<Inferred<String>>,
    pub(super) version: Option<Inferred<String>>,
    pub(super) can_isolate: Option<Inferred<bool>>,
    pub(super) share_torch: Option<Inferred<bool>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexKind {
    Default,
    Extra,
    FindLinks,
}

/// What a requirement string turned out to be.
pub(super) enum Class {
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

pub(super) fn classify(text: &str) -> Class {
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

pub(super) struct Collector {
    pub(super) dir: PathBuf,
    pub(super) sources: Vec<String>,
    pub(super) seen_files: HashSet<PathBuf>,
    pub(super) deps: Vec<Dep>,
    pub(super) index_url: Option<Inferred<String>>,
    pub(super) extra_index_urls: Vec<Inferred<String>>,
    pub(super) find_links: Vec<Inferred<String>>,
    pub(super) dropped: Vec<Finding>,
    pub(super) check: Vec<Finding>,
    pub(super) not_inferred: Vec<Finding>,
}

impl Collector {
    pub(super) fn new(dir: &Path) -> Collector {
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

    pub(super) fn not(
        &mut self,
        kind: FindingKind,
        from: &str,
        text: &str,
        message: impl Into<String>,
    ) {
        self.not_inferred.push(Finding {
            kind,
            from: from.to_string(),
            text: text.to_string(),
            message: message.into(),
        });
    }

    /// Reads a file as text: UTF-8 (BOM dropped), or UTF-16 with a BOM;
    /// anything else is decoded lossily and reported.
    pub(super) fn read_text(&mut self, path: &Path) -> Option<String> {
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

    pub(super) fn read_requirements(&mut self, path: &Path, depth: usize, note: Option<&str>) {
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
    pub(super) fn add(&mut self, text: &str, from: &str, note: Option<&str>) {
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

    pub(super) fn index(&mut self, kind: IndexKind, v: &str, from: &str, note: Option<&str>) {
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

    // -- install.py --

    pub(super) fn read_install_py(&mut self) {
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

    pub(super) fn note_other_files(&mut self) {
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
    pub(super) fn share_torch(&mut self) {
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
    pub(super) fn merge(&mut self) -> Vec<Dep> {
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
