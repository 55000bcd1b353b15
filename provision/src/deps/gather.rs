//! What each pack asks for: its manifest's requirements, or — for a pack
//! not migrated yet — what `nodecell migrate` would write
//! ([`crate::migrate::infer_with`]), with where each requirement came from.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::{IndexOptions, ManifestFormat, Pack};
use crate::migrate::{self, FindingKind};
use crate::requirement::{Requirement, Source};

use super::DepsError;

/// One requirement of a pack and where it was written.
#[derive(Debug, Clone, Serialize)]
pub struct Req {
    /// As written.
    pub text: String,
    /// Normalized distribution name (None for a bare URL or path).
    pub name: Option<String>,
    /// Where: `manifest.yaml: dependencies[2]`, `requirements.txt:4`.
    pub from: String,
    /// The parsed requirement.
    #[serde(skip)]
    pub req: Requirement,
}

impl Req {
    fn new(req: Requirement, from: String) -> Req {
        Req {
            text: req.as_written().trim().to_string(),
            name: req.name.clone(),
            from,
            req,
        }
    }

    /// Whether it is fetched from a version-control system (`git+https://...`).
    pub fn is_vcs(&self) -> bool {
        matches!(&self.req.source, Source::Url(u) if ["git+", "hg+", "svn+", "bzr+"].iter().any(|p| u.starts_with(p)))
    }

    /// Whether it is a direct URL to an archive (`https://.../x.whl`).
    pub fn is_url(&self) -> bool {
        matches!(&self.req.source, Source::Url(u) if u.starts_with("http://") || u.starts_with("https://"))
    }
}

/// What one pack needs.
#[derive(Debug, Clone, Serialize)]
pub struct PackReqs {
    /// The pack's name.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Where the requirements come from: the manifest file, or
    /// `inferred (not migrated): requirements.txt, install.py`.
    pub source: String,
    /// Whether they come from a manifest (else inferred the way `nodecell migrate` would).
    pub has_manifest: bool,
    /// What the pack's venv installs.
    pub requirements: Vec<Req>,
    /// What it takes from the host (`shared:`, the host app's requirements).
    pub shared: Vec<Req>,
    /// Whether the host's torch is shared.
    pub share_torch: bool,
    /// The interpreter asked for (None: the host's).
    pub python: Option<String>,
    /// Package index options.
    pub index: IndexOptions,
    /// Whether its sandbox keeps network access.
    pub sandbox_network: bool,
    /// Whether its sandbox may use the GPU.
    pub gpu: bool,
    /// What inference noticed (unparseable lines, conflicts inside the pack, ...).
    pub notes: Vec<String>,
}

impl PackReqs {
    /// Whether `other` could use the same venv settings (interpreter, indexes, torch sharing).
    pub fn same_venv_settings(&self, other: &PackReqs) -> bool {
        self.python == other.python
            && self.index == other.index
            && self.share_torch == other.share_torch
    }

    /// Whether `other`'s sandbox is set the same way (so one cell could hold both).
    pub fn same_sandbox(&self, other: &PackReqs) -> bool {
        self.sandbox_network == other.sandbox_network && self.gpu == other.gpu
    }
}

fn manifest_file_name(p: &Pack) -> String {
    p.manifest_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.manifest_path.display().to_string())
}

fn has_manifest(dir: &Path) -> bool {
    ["manifest.yaml", "manifest.yml", "pyisolate.yaml"]
        .iter()
        .any(|f| dir.join(f).is_file())
        || std::fs::read_to_string(dir.join("pyproject.toml"))
            .is_ok_and(|t| t.contains("[tool.nodecell]") || t.contains("[tool.comfy.isolation]"))
}

/// Reads what the pack in `dir` asks for. `app`: the host app's folder, for
/// packs inferred without a manifest (what it provides is shared).
pub fn gather(dir: &Path, app: Option<&Path>) -> Result<PackReqs, DepsError> {
    if !dir.is_dir() {
        return Err(DepsError::NotAPack {
            path: dir.to_path_buf(),
        });
    }
    if has_manifest(dir) {
        let p = Pack::load(dir)?;
        let file = manifest_file_name(&p);
        let m = &p.manifest;
        let field = if p.format == ManifestFormat::Pyproject {
            "tool.nodecell.dependencies"
        } else {
            "dependencies"
        };
        return Ok(PackReqs {
            name: m.name.clone(),
            dir: p.dir.clone(),
            source: file.clone(),
            has_manifest: true,
            requirements: m
                .dependencies
                .iter()
                .enumerate()
                .map(|(i, r)| Req::new(r.clone(), format!("{file}: {field}[{i}]")))
                .collect(),
            shared: m
                .shared
                .iter()
                .enumerate()
                .map(|(i, r)| Req::new(r.clone(), format!("{file}: shared[{i}]")))
                .collect(),
            share_torch: m.share_torch,
            python: m.python.clone(),
            index: m.index.clone(),
            sandbox_network: m.sandbox.network,
            gpu: m.sandbox.gpu,
            notes: Vec::new(),
        });
    }
    let r = migrate::infer_with(dir, app)?;
    let parse = |items: &[migrate::Inferred<String>]| -> Vec<Req> {
        items
            .iter()
            .filter_map(|d| {
                Requirement::parse(&d.value)
                    .ok()
                    .map(|req| Req::new(req, d.from.clone()))
            })
            .collect()
    };
    let mut notes: Vec<String> = r
        .not_inferred
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                FindingKind::Conflict | FindingKind::Unparseable | FindingKind::Include
            )
        })
        .map(|f| format!("{}: {} ({})", f.from, f.text, f.message))
        .collect();
    notes.extend(
        r.check
            .iter()
            .filter(|f| f.kind == FindingKind::NumpyAbi)
            .map(|f| format!("{}: {}", f.from, f.message)),
    );
    let sources = if r.sources.is_empty() {
        "nothing to read".to_string()
    } else {
        r.sources.join(", ")
    };
    Ok(PackReqs {
        name: r.name.value.clone(),
        dir: r.pack_dir.clone(),
        source: format!("inferred (not migrated): {sources}"),
        has_manifest: false,
        requirements: parse(&r.dependencies),
        shared: parse(&r.shared),
        share_torch: r.share_torch.value,
        python: None,
        index: IndexOptions {
            index_url: r.index_url.as_ref().map(|u| u.value.clone()),
            extra_index_urls: r.extra_index_urls.iter().map(|u| u.value.clone()).collect(),
            find_links: r.find_links.iter().map(|u| u.value.clone()).collect(),
        },
        sandbox_network: false,
        gpu: false,
        notes,
    })
}
