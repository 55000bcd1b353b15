//! Building (or finding) a pack's venv.
//!
//! The venv's cache key is a hash of everything that decides its content:
//! the interpreter (real path, version, implementation), the normalized
//! requirement list, the shared host packages (torch with `share_torch`,
//! `shared:`, the host app's requirements) with their site folder and the
//! exact versions of their dependency closure, and the index options
//! (manifest and uv's `UV_*` index variables). Same key, same venv: two packs
//! with the same needs share one.
//!
//! Safe under concurrent starts: a file lock per key (`.locks/<key>.lock`)
//! makes the second process wait and reuse the first one's build. A build
//! happens in `.tmp/` and is renamed into place only once complete (the
//! venv is made with `uv venv --relocatable`), so a failed or killed build
//! leaves no entry.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fs4::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::write_usage;
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, EventSink};
use crate::interpreter::{check_world_access, hex, running_as_root, Interpreter};
use crate::manifest::Pack;
use crate::shared::HostShare;
use crate::uv::{display_command, parse_line, run_streaming, Line, Progress, Uv, UV_INDEX_ENV};

/// The interpreter venvs are built on when neither the manifest nor the host names one.
pub const FALLBACK_PYTHON: &str = "/usr/bin/python3";

/// File written into every finished venv: its [`VenvInfo`].
pub const INFO_FILE: &str = "nodecell-venv.json";
/// Version of the venv layout; part of the key.
const LAYOUT: u32 = 1;

/// How a [`Provisioner`] works. `Default` gives the documented defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The venv cache root. `None`: [`default_root`].
    pub root: Option<PathBuf>,
    /// The interpreter running the host (e.g. the Python layer's
    /// `sys.executable`): the default interpreter for venvs, where the shared
    /// torch comes from, and where uv is looked for after `PATH`.
    pub host_python: Option<PathBuf>,
    /// uv to use (otherwise found as described in [`crate::uv`]).
    pub uv: Option<PathBuf>,
    /// `UV_CACHE_DIR` for uv runs (otherwise uv's own default or the
    /// inherited variable).
    pub uv_cache_dir: Option<PathBuf>,
    /// Never touch the network: install only from uv's cache.
    pub offline: bool,
    /// Compile `.pyc` files at install time (slower build, faster first
    /// import in a read-only sandbox).
    pub compile_bytecode: bool,
    /// Distributions of the host every venv shares with their dependency
    /// closure (the host app's own requirements, e.g. ComfyUI's
    /// `requirements.txt`); see [`crate::shared`]. Never installed into the
    /// venv: one the host lacks stays absent, and a pack pin still wins.
    pub share: Vec<String>,
}

/// The default venv cache root: `$NODECELL_VENV_ROOT` if set, else
/// `/var/cache/nodecell/venvs` when running as root, else
/// `${XDG_CACHE_HOME:-~/.cache}/nodecell/venvs`.
pub fn default_root() -> PathBuf {
    if let Some(r) = std::env::var_os("NODECELL_VENV_ROOT").filter(|v| !v.is_empty()) {
        return PathBuf::from(r);
    }
    if running_as_root() {
        return PathBuf::from("/var/cache/nodecell/venvs");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("nodecell").join("venvs")
}

/// What was recorded about a venv when it was built (`nodecell-venv.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenvInfo {
    /// The cache key (the venv folder's name).
    pub key: String,
    /// The pack that built it.
    pub pack: String,
    /// Seconds since the epoch when it was built.
    pub created_unix: u64,
    /// The base interpreter's real path (the venv's `bin/python` points at it).
    pub base_executable: PathBuf,
    /// The base interpreter's `sys.base_prefix` (standard library).
    pub base_prefix: PathBuf,
    /// The interpreter's version.
    pub python_version: String,
    /// The venv's site-packages folder (inside the venv).
    pub site_packages: PathBuf,
    /// The requirements as handed to uv.
    pub requirements: Vec<String>,
    /// Shared host packages (torch with `share_torch`, `shared:`, the host
    /// app's requirements), if any.
    pub shared_torch: Option<SharedTorchInfo>,
    /// Distributions in the venv (shared ones included).
    pub packages: Vec<Package>,
    /// What the key was computed from.
    pub key_input: serde_json::Value,
}

/// What a venv borrows from the host (torch with `share_torch`, `shared:`,
/// the host app's requirements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedTorchInfo {
    /// The host interpreter.
    pub host_python: PathBuf,
    /// torch's version, when torch is shared.
    pub torch_version: Option<String>,
    /// The shared roots asked for.
    #[serde(default)]
    pub roots: Vec<String>,
    /// The host site-packages folder torch lives in.
    pub site_packages: PathBuf,
    /// `name==version` of every shared distribution.
    pub dists: Vec<String>,
    /// The host paths the venv's links point at (bind them read-only).
    pub readonly_paths: Vec<PathBuf>,
}

/// One installed distribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Its normalized name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Whether it is the host's, shared (`share_torch`).
    pub shared: bool,
}

/// A ready venv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Venv {
    /// The cache key.
    pub key: String,
    /// The venv folder.
    pub path: PathBuf,
    /// `<venv>/bin/python`.
    pub python: PathBuf,
    /// Whether it already existed.
    pub cache_hit: bool,
    /// Whether this call waited for another process building the same key.
    pub waited: bool,
    /// What was recorded when it was built.
    pub info: VenvInfo,
}

/// Everything decided before building: interpreter, shared torch, key.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The cache key.
    pub key: String,
    /// The venv's interpreter.
    pub interpreter: Interpreter,
    /// The shared host closure (torch with `share_torch`, `shared:`, the
    /// host app's requirements), if anything is shared.
    pub host_share: Option<HostShare>,
    /// Requirements as handed to uv.
    pub requirements: Vec<String>,
    /// What the key hashes (canonical JSON).
    pub key_input: serde_json::Value,
}

/// Builds and finds pack venvs in one cache root.
#[derive(Debug)]
pub struct Provisioner {
    root: PathBuf,
    opts: Options,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Creates `dir` (and parents) world-readable when running as root.
pub(crate) fn create_dir_shared(dir: &Path) -> Result<()> {
    // Every folder this call creates (not only the last) gets mode 0755 as
    // root, whatever the umask.
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
    if running_as_root() {
        for d in missing.iter().rev() {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(Error::io(d, "chmod"))?;
        }
    }
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a build folder unless disarmed (also on panic or early return).
struct TmpGuard(Vec<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Makes a tree readable (and folders searchable) by every uid, without
/// following symlinks.
fn make_world_readable(root: &Path) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        if m.file_type().is_symlink() {
            continue;
        }
        let mode = m.permissions().mode() & 0o7777;
        let want = if m.is_dir() || mode & 0o111 != 0 {
            mode | 0o555
        } else {
            mode | 0o444
        };
        if want != mode {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))?;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

fn find_site_packages(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found.into_iter().next()
}

fn scan_packages(site: &Path) -> Vec<Package> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(site) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "dist-info") {
            continue;
        }
        let Ok(meta) = std::fs::read_to_string(p.join("METADATA")) else {
            continue;
        };
        let (mut name, mut version) = (None, None);
        for line in meta.lines() {
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Name:") {
                name = Some(crate::requirement::normalize_name(v.trim()));
            } else if let Some(v) = line.strip_prefix("Version:") {
                version = Some(v.trim().to_string());
            }
        }
        if let (Some(name), Some(version)) = (name, version) {
            let shared = p.join(crate::shared::SHIM_MARKER).exists();
            out.push(Package {
                name,
                version,
                shared,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl Provisioner {
    /// A provisioner over `options.root` (created if missing; world-readable
    /// when running as root, since sandboxed workers run as another uid).
    pub fn new(options: Options) -> Result<Provisioner> {
        let root = options.root.clone().unwrap_or_else(default_root);
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map_err(Error::io(&root, "resolve"))?
                .join(root)
        };
        create_dir_shared(&root)?;
        for sub in [".locks", ".tmp", ".usage", ".interpreters"] {
            create_dir_shared(&root.join(sub))?;
        }
        if running_as_root() {
            check_world_access(&root, false).map_err(|reason| Error::Root {
                path: root.clone(),
                reason: format!(
                    "{reason}; choose a root outside such folders (NODECELL_VENV_ROOT)"
                ),
            })?;
        }
        Ok(Provisioner {
            root,
            opts: options,
        })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options it was made with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn interp_cache(&self) -> PathBuf {
        self.root.join(".interpreters")
    }

    /// The interpreter a pack's venv is built on: the manifest's `python:`,
    /// else the host's interpreter, else [`FALLBACK_PYTHON`]. As root, only
    /// interpreters an unprivileged uid can run qualify.
    pub fn select_interpreter(&self, pack: &Pack) -> Result<Interpreter> {
        let need = running_as_root();
        let cache = self.interp_cache();
        if let Some(spec) = &pack.manifest.python {
            return Interpreter::find(spec, Some(&cache), need);
        }
        let mut why_not_host = None;
        if let Some(host) = &self.opts.host_python {
            let i = Interpreter::query(&absolute(host), Some(&cache))?;
            match (need, i.check_world_access()) {
                (false, _) | (true, Ok(())) => return Ok(i),
                (true, Err(why)) => why_not_host = Some(why),
            }
        }
        let fallback = Path::new(FALLBACK_PYTHON);
        let i = Interpreter::query(fallback, Some(&cache)).map_err(|e| match &why_not_host {
            Some(why) => Error::Interpreter {
                spec: "host".into(),
                reason: format!("the host interpreter is unusable ({why}) and {e}"),
            },
            None => e,
        })?;
        if need {
            i.check_world_access()
                .map_err(|reason| Error::Interpreter {
                    spec: fallback.display().to_string(),
                    reason,
                })?;
        }
        Ok(i)
    }

    fn host_interpreter(&self, venv_interp: &Interpreter) -> Result<Interpreter> {
        match &self.opts.host_python {
            Some(h) => Interpreter::query(&absolute(h), Some(&self.interp_cache())),
            None => Ok(venv_interp.clone()),
        }
    }

    /// Decides interpreter, shared torch and cache key without building.
    pub fn plan(&self, pack: &Pack) -> Result<Plan> {
        let m = &pack.manifest;
        let interpreter = self.select_interpreter(pack)?;
        let mut roots: Vec<String> = Vec::new();
        if m.share_torch {
            roots.push("torch".into());
        }
        roots.extend(m.shared.iter().filter_map(|r| r.name.clone()));
        roots.extend(self.opts.share.iter().cloned());
        let host_share = if roots.is_empty() {
            None
        } else {
            let what = if m.share_torch {
                "the host's torch is"
            } else {
                "the host's shared packages are"
            };
            let host = self.host_interpreter(&interpreter)?;
            if (host.major, host.minor, &host.implementation)
                != (
                    interpreter.major,
                    interpreter.minor,
                    &interpreter.implementation,
                )
            {
                return Err(Error::SharedTorch {
                    pack: m.name.clone(),
                    reason: format!(
                        "{what} built for {} {} ({}) but the pack's interpreter is {} {} ({}); \
                         use the same Python version (set `python:` or drop it)",
                        host.implementation,
                        host.short_version(),
                        host.path.display(),
                        interpreter.implementation,
                        interpreter.short_version(),
                        interpreter.path.display()
                    ),
                });
            }
            let t = HostShare::find(&host, &roots, m.share_torch).map_err(|reason| {
                Error::SharedTorch {
                    pack: m.name.clone(),
                    reason,
                }
            })?;
            if running_as_root() && !t.dists.is_empty() {
                check_world_access(&t.site_packages, false).map_err(|reason| {
                    Error::SharedTorch {
                        pack: m.name.clone(),
                        reason,
                    }
                })?;
            }
            Some(t)
        };
        // `shared:` entries go to uv too: the host's copy (a shim) satisfies
        // them, and one it does not satisfy is installed as usual.
        let requirements: Vec<String> = m
            .dependencies
            .iter()
            .chain(&m.shared)
            .map(|r| r.uv_arg(&pack.dir))
            .collect();
        let mut canonical: Vec<String> = m
            .dependencies
            .iter()
            .chain(&m.shared)
            .map(|r| r.canonical(&pack.dir))
            .collect();
        canonical.sort();
        canonical.dedup();
        let mut index_env = serde_json::Map::new();
        for v in UV_INDEX_ENV {
            if let Some(val) = std::env::var_os(v) {
                index_env.insert(v.to_string(), val.to_string_lossy().into_owned().into());
            }
        }
        let key_input = serde_json::json!({
            "layout": LAYOUT,
            "interpreter": {
                "base_executable": interpreter.base_executable,
                "version": interpreter.version,
                "implementation": interpreter.implementation,
                "cache_tag": interpreter.cache_tag,
            },
            "requirements": canonical,
            // Only torch shared: the key keeps its earlier shape (cached
            // venvs stay valid); other roots add `roots`.
            "share_torch": host_share.as_ref().map(|t| {
                let mut v = serde_json::json!({
                    "site_packages": t.site_packages,
                    "torch": t.torch_version.clone().unwrap_or_default(),
                    "pins": t.pins(),
                });
                if t.roots != ["torch"] {
                    v["roots"] = serde_json::json!(t.roots);
                }
                v
            }),
            "index": {
                "index_url": m.index.index_url,
                "extra_index_urls": m.index.extra_index_urls,
                "find_links": m.index.find_links,
                "env": index_env,
            },
        });
        // serde_json's Map is ordered (BTreeMap): the text is canonical.
        let text = serde_json::to_string(&key_input).unwrap_or_default();
        let key = hex(&Sha256::digest(text.as_bytes())[..16]);
        Ok(Plan {
            key,
            interpreter,
            host_share,
            requirements,
            key_input,
        })
    }

    /// Loads the pack in `dir` and provisions it.
    pub fn provision_dir(&self, dir: &Path, sink: &dyn EventSink) -> Result<Venv> {
        let pack = Pack::load(dir)?;
        self.provision(&pack, sink)
    }

    /// Builds the pack's venv, or finds it in the cache. Reports progress to
    /// `sink`; on failure reports `failed` and leaves no cache entry.
    pub fn provision(&self, pack: &Pack, sink: &dyn EventSink) -> Result<Venv> {
        let t0 = Instant::now();
        let name = pack.manifest.name.clone();
        let plan = match self.plan(pack) {
            Ok(p) => p,
            Err(e) => {
                sink.event(&Event {
                    pack: name,
                    key: String::new(),
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                    kind: EventKind::Failed {
                        message: e.to_string(),
                    },
                });
                return Err(e);
            }
        };
        let emit = |kind: EventKind| {
            sink.event(&Event {
                pack: name.clone(),
                key: plan.key.clone(),
                elapsed_ms: t0.elapsed().as_millis() as u64,
                kind,
            })
        };
        match self.provision_planned(pack, &plan, &emit) {
            Ok(v) => Ok(v),
            Err(e) => {
                emit(EventKind::Failed {
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }

    fn lock(&self, key: &str, emit: &dyn Fn(EventKind)) -> Result<(File, bool)> {
        let path = self.root.join(".locks").join(format!("{key}.lock"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path, "open lock"))?;
        match FileExt::try_lock(&f) {
            Ok(()) => Ok((f, false)),
            Err(fs4::TryLockError::WouldBlock) => {
                emit(EventKind::Waiting { lock: path.clone() });
                FileExt::lock(&f).map_err(Error::io(&path, "lock"))?;
                Ok((f, true))
            }
            Err(fs4::TryLockError::Error(e)) => Err(Error::Io {
                path,
                op: "lock",
                source: e,
            }),
        }
    }

    fn read_info(dir: &Path) -> Option<VenvInfo> {
        let text = std::fs::read(dir.join(INFO_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn provision_planned(
        &self,
        pack: &Pack,
        plan: &Plan,
        emit: &dyn Fn(EventKind),
    ) -> Result<Venv> {
        let key = &plan.key;
        let name = &pack.manifest.name;
        let final_dir = self.root.join(key);
        let (lock, waited) = self.lock(key, emit)?;

        if let Some(info) = Self::read_info(&final_dir) {
            write_usage(&self.root, key, name);
            let packages = info.packages.len();
            emit(EventKind::Done {
                venv: final_dir.clone(),
                cache_hit: true,
                waited,
                packages,
                installed: 0,
                resolve_ms: 0,
                download_ms: 0,
                install_ms: 0,
            });
            drop(lock);
            return Ok(Venv {
                key: key.clone(),
                python: final_dir.join("bin").join("python"),
                path: final_dir,
                cache_hit: true,
                waited,
                info,
            });
        }
        if final_dir.exists() {
            // Not ours (no info file): never produced by a finished build.
            std::fs::remove_dir_all(&final_dir)
                .map_err(Error::io(&final_dir, "remove incomplete venv"))?;
        }

        // Leftovers of a killed build of this key (we hold its lock).
        let tmp_root = self.root.join(".tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp_root) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{key}."))
                {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = tmp_root.join(format!("{key}.{}.{seq}", std::process::id()));
        let constraints = tmp_root.join(format!(
            "{key}.{}.{seq}.constraints.txt",
            std::process::id()
        ));
        let guard = TmpGuard(vec![tmp.clone(), constraints.clone()]);

        let uv = self.find_uv(plan)?;
        emit(EventKind::Resolving {
            requirements: plan.requirements.len(),
        });

        // 1. The venv.
        let mut cmd = uv.command();
        cmd.current_dir(&tmp_root)
            .arg("venv")
            .args(["--no-config", "--no-project", "--relocatable", "--python"])
            .arg(&plan.interpreter.path)
            .arg(&tmp);
        self.uv_env(&mut cmd);
        self.run_uv(name, &mut cmd, |_| {})?;
        let site = find_site_packages(&tmp).ok_or_else(|| Error::Io {
            path: tmp.join("lib"),
            op: "find site-packages",
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "uv venv made no lib/*/site-packages",
            ),
        })?;

        // 2. Shared host packages.
        let mut shared_info = None;
        let mut constrained = false;
        if let Some(t) = &plan.host_share {
            let targets = t
                .install_into(&tmp, &site)
                .map_err(Error::io(&tmp, "link the host's packages"))?;
            if let (true, Some(v)) = (pack.manifest.share_torch, &t.torch_version) {
                std::fs::write(&constraints, format!("torch=={v}\n"))
                    .map_err(Error::io(&constraints, "write"))?;
                constrained = true;
            }
            shared_info = Some(SharedTorchInfo {
                host_python: t.python.clone(),
                torch_version: t.torch_version.clone(),
                roots: t.roots.clone(),
                site_packages: t.site_packages.clone(),
                dists: t.pins(),
                readonly_paths: targets,
            });
        }

        // 3. The pack's requirements.
        let mut progress = Progress::default();
        let (mut resolve_ms, mut download_ms, mut install_ms) = (0u64, 0u64, 0u64);
        if !plan.requirements.is_empty() {
            let mut cmd = uv.command();
            cmd.current_dir(&tmp_root)
                .args(["pip", "install", "--no-config", "--python"])
                .arg(tmp.join("bin").join("python"));
            if self.opts.offline {
                cmd.arg("--offline");
            }
            if self.opts.compile_bytecode {
                cmd.arg("--compile-bytecode");
            }
            let ix = &pack.manifest.index;
            if let Some(u) = &ix.index_url {
                cmd.args(["--default-index", u]);
            }
            for u in &ix.extra_index_urls {
                cmd.args(["--index", u]);
            }
            for u in &ix.find_links {
                cmd.args(["--find-links", u]);
            }
            if constrained {
                cmd.arg("--constraints").arg(&constraints);
            }
            cmd.args(&plan.requirements);
            self.uv_env(&mut cmd);
            let phase_start = std::cell::Cell::new(Instant::now());
            let resolve_t = std::cell::Cell::new(0u64);
            let download_t = std::cell::Cell::new(0u64);
            let installing = std::cell::Cell::new(false);
            self.run_uv(name, &mut cmd, |line| {
                let parsed = parse_line(line);
                progress.update(&parsed);
                match parsed {
                    Line::Resolved(n) => {
                        resolve_t.set(phase_start.get().elapsed().as_millis() as u64);
                        phase_start.set(Instant::now());
                        emit(EventKind::Downloading {
                            packages: n,
                            resolve_ms: resolve_t.get(),
                        });
                    }
                    Line::Downloading(package, size) => emit(EventKind::Download { package, size }),
                    Line::Prepared(n) => {
                        download_t.set(phase_start.get().elapsed().as_millis() as u64);
                        phase_start.set(Instant::now());
                        installing.set(true);
                        emit(EventKind::Installing {
                            packages: n,
                            download_ms: download_t.get(),
                        });
                    }
                    // Everything came from uv's cache: no "Prepared" line.
                    Line::Installed(n) if !installing.get() => {
                        installing.set(true);
                        emit(EventKind::Installing {
                            packages: n,
                            download_ms: 0,
                        });
                    }
                    _ => {}
                }
            })?;
            resolve_ms = resolve_t.get();
            download_ms = download_t.get();
            install_ms = phase_start.get().elapsed().as_millis() as u64;
        }

        // 4. Record, make readable, move into place.
        let packages = scan_packages(&site);
        let info = VenvInfo {
            key: key.clone(),
            pack: name.clone(),
            created_unix: now_unix(),
            base_executable: plan.interpreter.base_executable.clone(),
            base_prefix: plan.interpreter.base_prefix.clone(),
            python_version: plan.interpreter.version.clone(),
            site_packages: final_dir.join(site.strip_prefix(&tmp).unwrap_or(&site)),
            requirements: plan.requirements.clone(),
            shared_torch: shared_info,
            packages,
            key_input: plan.key_input.clone(),
        };
        let text = serde_json::to_vec_pretty(&info).unwrap_or_default();
        std::fs::write(tmp.join(INFO_FILE), text)
            .map_err(Error::io(tmp.join(INFO_FILE), "write"))?;
        make_world_readable(&tmp).map_err(Error::io(&tmp, "make world-readable"))?;
        std::fs::rename(&tmp, &final_dir)
            .map_err(Error::io(&final_dir, "rename the finished venv into place"))?;
        drop(guard);
        write_usage(&self.root, key, name);
        let installed = progress.installed.unwrap_or(progress.added.len());
        emit(EventKind::Done {
            venv: final_dir.clone(),
            cache_hit: false,
            waited,
            packages: info.packages.len(),
            installed,
            resolve_ms,
            download_ms,
            install_ms,
        });
        drop(lock);
        Ok(Venv {
            key: key.clone(),
            python: final_dir.join("bin").join("python"),
            path: final_dir,
            cache_hit: false,
            waited,
            info,
        })
    }

    fn find_uv(&self, plan: &Plan) -> Result<Uv> {
        let host = self.opts.host_python.as_deref().map(absolute);
        let prefix = match &host {
            Some(h) => Interpreter::query(h, Some(&self.interp_cache()))
                .ok()
                .map(|i| i.prefix),
            None => Some(plan.interpreter.prefix.clone()),
        };
        Uv::find(self.opts.uv.as_deref(), host.as_deref(), prefix.as_deref())
    }

    fn uv_env(&self, cmd: &mut Command) {
        if let Some(d) = &self.opts.uv_cache_dir {
            cmd.env("UV_CACHE_DIR", d);
        }
        if self.opts.offline {
            cmd.env("UV_OFFLINE", "1");
        }
    }

    fn run_uv(&self, pack: &str, cmd: &mut Command, on_line: impl FnMut(&str)) -> Result<()> {
        let shown = display_command(cmd);
        let (status, stderr) = run_streaming(cmd, on_line).map_err(|e| Error::Uv {
            pack: pack.to_string(),
            command: shown.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Uv {
                pack: pack.to_string(),
                command: shown,
                status: status.to_string(),
                stderr: stderr.trim_end().to_string(),
            })
        }
    }

    /// Provisions the pack in `dir` and says how to launch a command in its
    /// sandbox: see [`crate::LaunchSettings`].
    pub fn launch_settings(
        &self,
        dir: &Path,
        sink: &dyn EventSink,
    ) -> Result<crate::LaunchSettings> {
        let pack = Pack::load(dir)?;
        let venv = self.provision(&pack, sink)?;
        Ok(crate::LaunchSettings::new(&pack, &venv))
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Reads the usage record of `key` (used by [`crate::VenvCache`]).
pub(crate) fn usage_path(root: &Path, key: &str) -> PathBuf {
    root.join(".usage").join(format!("{key}.json"))
}
