//! nodecell's pack environments: read a node pack's manifest, build the venv
//! it asks for with uv, keep it in a content-addressed cache, and say how to
//! launch the pack's sandbox with it.
//!
//! Main types:
//!
//! * [`Pack`] / [`Manifest`] — `manifest.yaml` (or `pyisolate.yaml`, or
//!   `[tool.nodecell]` in `pyproject.toml`); every mistake is a
//!   [`ManifestError`] naming file, line, field and what was expected.
//! * [`Provisioner`] — builds or finds a pack's [`Venv`]: one per cache key,
//!   safe under concurrent starts (lock per key, build in a temporary folder,
//!   atomic rename), `share_torch` sharing the host's torch ([`shared`]).
//! * [`LaunchSettings`] — pack + venv → interpreter, environment, read-only
//!   and writable paths, network and limits, for `nodecell run --pack`.
//! * [`Event`] / [`EventSink`] — progress (resolving, downloading,
//!   installing, done) as values or JSON lines.
//! * [`VenvCache`] — listing and garbage collection of a cache root.
//! * [`deps`] — `nodecell deps`: how packs' requirements fit together and
//!   with the host (conflicts, shared venvs, numpy-ABI hazards, network needs).
//! * [`migrate`] — `nodecell migrate`: writes a `manifest.yaml` for an
//!   existing ComfyUI-style pack from its requirements.txt, pyproject.toml
//!   and install.py, and a [`migrate::MigrateReport`] of what it inferred.
//!
//! ```no_run
//! use nodecell_provision::{JsonLines, Options, Provisioner};
//! # fn main() -> Result<(), nodecell_provision::Error> {
//! let p = Provisioner::new(Options { host_python: Some("/usr/bin/python3.11".into()), ..Options::default() })?;
//! let venv = p.provision_dir("/packs/my_pack".as_ref(), &JsonLines::new(std::io::stdout()))?;
//! println!("{} (cache hit: {})", venv.path.display(), venv.cache_hit);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cache;
pub mod deps;
pub mod error;
pub mod events;
pub mod interpreter;
pub mod launch;
pub mod manifest;
pub mod migrate;
pub mod pep440;
mod provision;
pub mod requirement;
pub mod shared;
pub mod state;
pub mod uv;

pub use cache::{CachedVenv, GcReport, Usage, VenvCache};
pub use error::{Error, ManifestError, Result};
pub use events::{Event, EventKind, EventSink, JsonLines, NoEvents};
pub use interpreter::Interpreter;
pub use launch::LaunchSettings;
pub use manifest::{IndexOptions, Manifest, ManifestFormat, Pack, SandboxSettings};
pub use provision::{
    default_root, Options, Package, Plan, Provisioner, SharedTorchInfo, Venv, VenvInfo,
    FALLBACK_PYTHON, INFO_FILE,
};
pub use requirement::Requirement;
pub use shared::HostShare;
pub use uv::Uv;
