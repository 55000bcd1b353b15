//! What `migrate` tells the user: the inferred values with their sources,
//! the findings, and the human summary `nodecell migrate` prints.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

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
    pub(super) fn new(value: T, from: impl Into<String>) -> Self {
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
    /// A VCS requirement (`git+https://...`): fetched over the network when
    /// the venv is built.
    Vcs,
    /// A requirement the host app provides: written under `shared:`.
    AppProvided,
    /// A write into the pack's own folder (it lands in the pack's state layer).
    FolderWrite,
    /// A binary built against numpy 1.x pinned: `numpy<2` added beside it.
    NumpyAbi,
    /// Sandbox limits written as defaults, to review.
    Limits,
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
    /// Requirements the host app provides (`shared:`): taken from the host,
    /// not reinstalled (a version the host's copy does not satisfy is installed).
    pub shared: Vec<Inferred<String>>,
    /// The host app whose requirements were compared (its folder).
    pub app: Option<Inferred<String>>,
    /// Where the pack writes into its own folder (a heuristic source scan).
    pub folder_writes: Vec<Inferred<String>>,
    /// The sandbox limits written, as `(key, value)` (defaults to review).
    pub limits: Vec<(String, String)>,
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
        if let Some(a) = &self.app {
            writeln!(f, "host app: {} ({})", a.value, a.from)?;
        }
        if !self.shared.is_empty() {
            writeln!(
                f,
                "shared, provided by the host app ({}):",
                self.shared.len()
            )?;
            for d in &self.shared {
                writeln!(f, "  {}  ({})", d.value, d.from)?;
            }
        }
        if !self.limits.is_empty() {
            let l: Vec<String> = self
                .limits
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                f,
                "sandbox limits (defaults, review them): {}",
                l.join(", ")
            )?;
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
