//! `nodecell deps`: how a set of node packs' requirements fit together and
//! with the host environment.
//!
//! For each pack folder it reads what the pack asks for (its manifest, or
//! what `nodecell migrate` would write for a pack without one: [`gather`]),
//! resolves it with uv from uv's cache first ([`resolve`]), and reports
//! ([`DepsReport`], a table via `Display` or JSON via serde):
//!
//! * **conflicts between packs** — requirements no version satisfies
//!   together (PEP 440, [`crate::migrate::conflict`]) and, found by the
//!   resolver, transitive ones: such packs cannot share a venv;
//! * **conflicts with the host** — requirements the host interpreter's
//!   installed versions do not satisfy (what installing the pack into the
//!   host, as ComfyUI does without isolation, would change), and how many
//!   resolved versions differ from the host's;
//! * **which packs could share one venv** (same interpreter, indexes and
//!   torch sharing, and their requirements resolve together), and one cell
//!   (same sandbox settings too);
//! * **numpy-ABI hazards** — a binary built against numpy 1.x
//!   ([`crate::migrate::abi`], e.g. `opencv-python<=4.7.0.72`) beside a numpy
//!   that resolves to 2.x;
//! * **network needs** — VCS and URL requirements, indexes other than PyPI,
//!   and what uv's cache does not have.
//!
//! ```no_run
//! use nodecell_provision::deps::{analyze, DepsOptions};
//! let r = analyze(&["/packs/a".into(), "/packs/b".into()], &DepsOptions::default()).unwrap();
//! print!("{r}");
//! ```

pub mod check;
pub mod gather;
mod report;
pub mod resolve;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use crate::error::ManifestError;
use crate::interpreter::Interpreter;
use crate::migrate::MigrateError;
use crate::uv::Uv;

pub use check::{Conflict, Hazard, HostConflict, NetworkNeed, Side};
pub use gather::{PackReqs, Req};
pub use resolve::{Network, Resolution};

/// Packs beyond this many get no pairwise resolution (only the greedy
/// grouping's), to keep the number of resolver runs near linear.
pub const MAX_PAIRWISE: usize = 12;

/// What `analyze` may use.
#[derive(Debug, Clone, Default)]
pub struct DepsOptions {
    /// The host's interpreter: its installed distributions are the host
    /// environment, and packs resolve for it unless their manifest names
    /// another. None: no host checks, and resolution needs `python:` in
    /// each manifest.
    pub host_python: Option<PathBuf>,
    /// The uv executable (None: found as provisioning finds it).
    pub uv: Option<PathBuf>,
    /// The host app's folder, for packs without a manifest (what it
    /// provides is shared, as `nodecell migrate --app` writes).
    pub app: Option<PathBuf>,
    /// Whether resolution may go online for what uv's cache lacks.
    pub network: Network,
    /// Skip resolution (only the checks that need no resolver).
    pub no_resolve: bool,
}

/// Why the analysis could not run (problems of the packs are findings, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DepsError {
    /// The path is not a folder.
    #[error("{}: not a folder: expected the folder of a node pack", path.display())]
    NotAPack {
        /// The path given.
        path: PathBuf,
    },
    /// A pack's manifest is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A pack without a manifest could not be inferred.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// An interpreter cannot be used.
    #[error(transparent)]
    Provision(#[from] crate::error::Error),
    /// uv could not be run.
    #[error("uv {}: {reason}", path.display())]
    Uv {
        /// The uv executable.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Two pack folders have the same pack name.
    #[error("two packs are named {name:?}: {} and {}", first.display(), second.display())]
    SameName {
        /// The name.
        name: String,
        /// One folder.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
}

/// The host environment the packs were compared with.
#[derive(Debug, Clone, Serialize)]
pub struct HostEnv {
    /// Its interpreter.
    pub python: PathBuf,
    /// Its Python version.
    pub version: String,
    /// Installed distributions: normalized name -> version.
    pub installed: BTreeMap<String, String>,
}

/// One pack's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct PackReport {
    /// What it asks for.
    #[serde(flatten)]
    pub pack: PackReqs,
    /// Its own resolution (None with `no_resolve`).
    pub resolution: Option<Resolution>,
    /// Requirements left out of resolution (VCS: cloned only when provisioning).
    pub left_out: Vec<String>,
    /// Resolved versions that differ from the host's installed ones: `(name, pack's, host's)`.
    pub differs_from_host: Vec<(String, String, String)>,
}

/// Packs that could share one venv (and, with `one_cell`, one sandbox).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// The packs.
    pub packs: Vec<String>,
    /// Whether their sandbox settings agree too (one cell could hold them).
    pub one_cell: bool,
}

/// Everything `nodecell deps` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DepsReport {
    /// The host environment, when a host interpreter was given.
    pub host: Option<HostEnv>,
    /// The resolver used (None with `no_resolve`).
    pub resolver: Option<String>,
    /// Per pack.
    pub packs: Vec<PackReport>,
    /// Packs that cannot share a venv, and why.
    pub conflicts: Vec<Conflict>,
    /// Requirements the host's versions do not satisfy.
    pub host_conflicts: Vec<HostConflict>,
    /// numpy-ABI hazards.
    pub hazards: Vec<Hazard>,
    /// What provisioning fetches over the network.
    pub network: Vec<NetworkNeed>,
    /// Packs that could share a venv.
    pub groups: Vec<Group>,
}

struct Resolver<'a> {
    uv: Uv,
    network: Network,
    host: Option<&'a Interpreter>,
    host_torch: Option<String>,
    pythons: HashMap<Option<String>, Result<PathBuf, String>>,
}

impl Resolver<'_> {
    fn python(&mut self, spec: &Option<String>) -> Result<PathBuf, String> {
        if !self.pythons.contains_key(spec) {
            let r = match spec {
                None => self.host.map(|h| h.path.clone()).ok_or_else(|| {
                    "no host interpreter given (--python) and the manifest names none".to_string()
                }),
                Some(s) => Interpreter::find(s, None, false)
                    .map(|i| i.path)
                    .map_err(|e| e.to_string()),
            };
            self.pythons.insert(spec.clone(), r);
        }
        self.pythons[spec].clone()
    }

    /// Resolve the union of `packs` (which share venv settings).
    fn resolve(&mut self, packs: &[&PackReqs]) -> Result<Resolution, DepsError> {
        let first = packs[0];
        let python = match self.python(&first.python) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Resolution {
                    error: Some(e),
                    ..Resolution::default()
                })
            }
        };
        let mut requirements: Vec<String> = Vec::new();
        for p in packs {
            for r in p.requirements.iter().chain(&p.shared) {
                if !r.is_vcs() && !requirements.contains(&r.text) {
                    requirements.push(r.text.clone());
                }
            }
        }
        let mut constraints = Vec::new();
        if first.share_torch {
            if let Some(v) = &self.host_torch {
                constraints.push(format!("torch=={v}"));
            }
        }
        let input = resolve::Input {
            requirements,
            constraints,
            python: &python,
            index: &first.index,
        };
        resolve::resolve(&self.uv, &input, self.network).map_err(|reason| DepsError::Uv {
            path: self.uv.path.clone(),
            reason,
        })
    }
}

fn uv_version(uv: &Uv) -> String {
    uv.command()
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "uv".into())
}

/// Analyze the packs in `dirs` (see the module docs).
pub fn analyze(dirs: &[PathBuf], opts: &DepsOptions) -> Result<DepsReport, DepsError> {
    let packs: Vec<PackReqs> = dirs
        .iter()
        .map(|d| gather::gather(d, opts.app.as_deref()))
        .collect::<Result<_, _>>()?;
    for (i, a) in packs.iter().enumerate() {
        if let Some(b) = packs[i + 1..].iter().find(|b| b.name == a.name) {
            return Err(DepsError::SameName {
                name: a.name.clone(),
                first: a.dir.clone(),
                second: b.dir.clone(),
            });
        }
    }
    let host_interp = match &opts.host_python {
        Some(p) => Some(Interpreter::query(
            &std::path::absolute(p).unwrap_or_else(|_| p.clone()),
            None,
        )?),
        None => None,
    };
    let host = host_interp.as_ref().map(|h| HostEnv {
        python: h.path.clone(),
        version: h.version.clone(),
        installed: crate::shared::installed(h),
    });
    let env = host_interp.as_ref().map(|h| &h.markers);

    let mut resolver = if opts.no_resolve {
        None
    } else {
        let uv = Uv::find(
            opts.uv.as_deref(),
            host_interp.as_ref().map(|h| h.path.as_path()),
            host_interp.as_ref().map(|h| h.prefix.as_path()),
        )?;
        Some(Resolver {
            uv,
            network: opts.network,
            host: host_interp.as_ref(),
            host_torch: host
                .as_ref()
                .and_then(|h| h.installed.get("torch").cloned()),
            pythons: HashMap::new(),
        })
    };
    let resolver_name = resolver.as_ref().map(|r| {
        format!(
            "{} ({})",
            uv_version(&r.uv),
            match r.network {
                Network::Never => "from its cache only",
                Network::IfNeeded => "from its cache, online for what is not cached",
            }
        )
    });

    // Each pack on its own.
    let mut reports = Vec::new();
    for p in &packs {
        let resolution = match resolver.as_mut() {
            Some(r) => Some(r.resolve(&[p])?),
            None => None,
        };
        let differs = match (&resolution, &host) {
            (Some(res), Some(h)) if res.ok => res
                .pins
                .iter()
                .filter_map(|(n, v)| {
                    h.installed
                        .get(n)
                        .filter(|hv| *hv != v)
                        .map(|hv| (n.clone(), v.clone(), hv.clone()))
                })
                .collect(),
            _ => Vec::new(),
        };
        reports.push(PackReport {
            pack: p.clone(),
            left_out: p
                .requirements
                .iter()
                .chain(&p.shared)
                .filter(|r| r.is_vcs())
                .map(|r| r.text.clone())
                .collect(),
            resolution,
            differs_from_host: differs,
        });
    }

    // Pairs: direct conflicts always; the resolver's verdict for small sets.
    let n = packs.len();
    let mut conflicts = Vec::new();
    let mut compatible = vec![vec![true; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&packs[i], &packs[j]);
            let direct = check::direct_conflicts(a, b, env);
            let mut ok = direct.is_empty() && a.same_venv_settings(b);
            conflicts.extend(direct);
            let both_resolve = |k: usize| reports[k].resolution.as_ref().is_none_or(|r| r.ok);
            if ok && n <= MAX_PAIRWISE && both_resolve(i) && both_resolve(j) {
                if let Some(r) = resolver.as_mut() {
                    let res = r.resolve(&[a, b])?;
                    if !res.ok {
                        ok = false;
                        conflicts.push(Conflict {
                            packs: [a.name.clone(), b.name.clone()],
                            dist: None,
                            sides: Vec::new(),
                            why: res
                                .error
                                .unwrap_or_else(|| "they do not resolve together".into()),
                        });
                    }
                }
            }
            compatible[i][j] = ok;
            compatible[j][i] = ok;
        }
    }

    // Groups: greedy, each checked by resolving it whole.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        let own_ok = reports[i].resolution.as_ref().is_none_or(|r| r.ok);
        let mut placed = false;
        if own_ok {
            for g in groups.iter_mut() {
                if !g.iter().all(|&j| compatible[i][j]) {
                    continue;
                }
                let fits = match resolver.as_mut() {
                    Some(r) if g.len() > 1 || n > MAX_PAIRWISE => {
                        let members: Vec<&PackReqs> =
                            g.iter().chain([&i]).map(|&k| &packs[k]).collect();
                        r.resolve(&members)?.ok
                    }
                    _ => true,
                };
                if fits {
                    g.push(i);
                    placed = true;
                    break;
                }
            }
        }
        if !placed {
            groups.push(vec![i]);
        }
    }
    let groups = groups
        .into_iter()
        .map(|g| Group {
            one_cell: g.iter().all(|&k| packs[k].same_sandbox(&packs[g[0]])),
            packs: g.iter().map(|&k| packs[k].name.clone()).collect(),
        })
        .collect();

    let mut host_conflicts = Vec::new();
    let mut hazards = Vec::new();
    let mut network = Vec::new();
    for r in &reports {
        if let Some(h) = &host {
            host_conflicts.extend(check::host_conflicts(&r.pack, &h.installed, env));
        }
        hazards.extend(check::numpy_hazards(&r.pack, r.resolution.as_ref()));
        network.extend(check::network_needs(&r.pack, r.resolution.as_ref()));
    }
    Ok(DepsReport {
        host,
        resolver: resolver_name,
        packs: reports,
        conflicts,
        host_conflicts,
        hazards,
        network,
        groups,
    })
}
