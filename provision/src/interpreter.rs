//! Python interpreters: which one a pack's venv is built on, what it is
//! (version, prefix, site-packages, marker values), and whether a sandboxed
//! worker (never host uid 0) can read it.
//!
//! Querying an interpreter runs it once (~20 ms); the answer is kept in the
//! venv root under `.interpreters/`, keyed by the file's identity, so a cache
//! hit does not start Python.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::requirement::MarkerEnv;

/// What nodecell needs to know about an interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// The path it was found at (absolute; may be a venv's `bin/python`).
    pub path: PathBuf,
    /// `sys.executable`.
    pub executable: PathBuf,
    /// The real file of the base interpreter (`sys._base_executable`,
    /// symlinks resolved): what a venv's `bin/python` points at.
    pub base_executable: PathBuf,
    /// `sys.prefix` (the venv, for a venv's python).
    pub prefix: PathBuf,
    /// `sys.base_prefix` (where the standard library lives).
    pub base_prefix: PathBuf,
    /// `platform.python_version()`, e.g. `3.11.2`.
    pub version: String,
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// `sys.implementation.name`, e.g. `cpython`.
    pub implementation: String,
    /// `sys.implementation.cache_tag`, e.g. `cpython-311`.
    pub cache_tag: String,
    /// Its site-packages folders, in `sys.path` order.
    pub site_packages: Vec<PathBuf>,
    /// Values for environment markers.
    pub markers: MarkerEnv,
}

const QUERY: &str = r#"
import json, os, platform, site, sys, sysconfig
impl = sys.implementation
def full(v):
    s = "%d.%d.%d" % (v.major, v.minor, v.micro)
    if v.releaselevel != "final":
        s += {"alpha": "a", "beta": "b", "candidate": "rc"}.get(v.releaselevel, "") + str(v.serial)
    return s
sp = []
for p in [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]] + (site.getsitepackages() if hasattr(site, "getsitepackages") else []):
    if p not in sp:
        sp.append(p)
print(json.dumps({
    "executable": sys.executable,
    "base_executable": getattr(sys, "_base_executable", sys.executable),
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "version": platform.python_version(),
    "major": sys.version_info[0],
    "minor": sys.version_info[1],
    "implementation": impl.name,
    "cache_tag": impl.cache_tag or "",
    "site_packages": sp,
    "markers": {
        "implementation_name": impl.name,
        "implementation_version": full(impl.version),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "python_version": "%d.%d" % sys.version_info[:2],
        "sys_platform": sys.platform,
    },
}))
"#;

#[derive(Deserialize)]
struct QueryOut {
    executable: PathBuf,
    base_executable: PathBuf,
    prefix: PathBuf,
    base_prefix: PathBuf,
    version: String,
    major: u32,
    minor: u32,
    implementation: String,
    cache_tag: String,
    site_packages: Vec<PathBuf>,
    markers: MarkerEnv,
}

#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    real: PathBuf,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    /// A venv's pyvenv.cfg changes what the interpreter reports.
    pyvenv_mtime_ns: Option<i128>,
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn stamp(path: &Path) -> Option<Stamp> {
    let real = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&real).ok()?;
    let pyvenv = path
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("pyvenv.cfg"));
    let pyvenv_mtime_ns = pyvenv
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| mtime_ns(&m));
    Some(Stamp {
        real,
        ino: m.ino(),
        size: m.size(),
        mtime_ns: mtime_ns(&m),
        pyvenv_mtime_ns,
    })
}

#[derive(Serialize, Deserialize)]
struct CachedInfo {
    stamp: Stamp,
    info: Interpreter,
}

/// Whether this process runs as uid 0 (then sandboxed workers run as another,
/// unprivileged uid). Read without libc: `/proc/self` belongs to the euid.
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Checks that an unprivileged uid (neither owner nor group) can reach
/// `path`: every folder above it searchable (o+x), the file itself readable
/// (o+r; and o+x if `exec`). Returns the first thing in the way.
pub fn check_world_access(path: &Path, exec: bool) -> std::result::Result<(), String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut dir = real.parent();
    while let Some(d) = dir {
        let mode = std::fs::metadata(d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} is mode {:04o}: other users cannot reach {} (sandboxed workers never run as uid 0)",
                d.display(),
                mode & 0o7777,
                real.display()
            ));
        }
        dir = d.parent();
    }
    let m = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    let mode = m.permissions().mode();
    let need = if m.is_dir() || exec { 0o005 } else { 0o004 };
    if mode & need != need {
        return Err(format!(
            "{} is mode {:04o}: other users cannot {} it (sandboxed workers never run as uid 0)",
            real.display(),
            mode & 0o7777,
            if exec { "run" } else { "read" }
        ));
    }
    Ok(())
}

impl Interpreter {
    /// Queries the interpreter at `path` (absolute). With `cache_dir`, a
    /// previous answer for the same unchanged file is reused.
    pub fn query(path: &Path, cache_dir: Option<&Path>) -> Result<Interpreter> {
        let spec = path.display().to_string();
        if !path.is_absolute() {
            return Err(Error::Interpreter {
                spec,
                reason: "expected an absolute path".into(),
            });
        }
        let st = stamp(path);
        let cache_file = cache_dir.map(|d| {
            let h = Sha256::digest(path.as_os_str().as_encoded_bytes());
            d.join(format!("{}.json", hex(&h[..12])))
        });
        if let (Some(file), Some(st)) = (&cache_file, &st) {
            if let Ok(text) = std::fs::read(file) {
                if let Ok(c) = serde_json::from_slice::<CachedInfo>(&text) {
                    if &c.stamp == st && c.info.path == path {
                        return Ok(c.info);
                    }
                }
            }
        }
        if st.is_none() {
            return Err(Error::Interpreter {
                spec,
                reason: "no such file".into(),
            });
        }
        let out = Command::new(path)
            .args(["-I", "-c", QUERY])
            .env_remove("PYTHONHOME")
            .env_remove("PYTHONPATH")
            .output()
            .map_err(|e| Error::Interpreter {
                spec: spec.clone(),
                reason: format!("cannot run it: {e}"),
            })?;
        if !out.status.success() {
            return Err(Error::Interpreter {
                spec,
                reason: format!(
                    "querying it failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let q: QueryOut = serde_json::from_slice(&out.stdout).map_err(|e| Error::Interpreter {
            spec: spec.clone(),
            reason: format!(
                "unexpected answer to the query ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ),
        })?;
        let base_executable =
            std::fs::canonicalize(&q.base_executable).unwrap_or(q.base_executable);
        let info = Interpreter {
            path: path.to_path_buf(),
            executable: q.executable,
            base_executable,
            prefix: q.prefix,
            base_prefix: q.base_prefix,
            version: q.version,
            major: q.major,
            minor: q.minor,
            implementation: q.implementation,
            cache_tag: q.cache_tag,
            site_packages: q.site_packages,
            markers: q.markers,
        };
        if let (Some(file), Some(st)) = (cache_file, stamp(path)) {
            // Best effort: an unwritable cache only costs a query next time.
            if let Some(dir) = file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Ok(text) = serde_json::to_vec(&CachedInfo {
                stamp: st,
                info: info.clone(),
            }) {
                let tmp = file.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &file).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        Ok(info)
    }

    /// Finds an interpreter from a manifest's `python:` value: an absolute
    /// path, `pythonX.Y`, or a version (`3.11`, `3.11.2`) looked up among
    /// local interpreters (`/usr/bin`, `/usr/local/bin`, then `PATH`;
    /// version-manager shims are skipped). When `need_world_access`, an
    /// interpreter other users cannot run (pyenv's under `/root`) is passed
    /// over.
    pub fn find(
        spec: &str,
        cache_dir: Option<&Path>,
        need_world_access: bool,
    ) -> Result<Interpreter> {
        let spec = spec.trim();
        if spec.starts_with('/') {
            let i = Interpreter::query(Path::new(spec), cache_dir)?;
            if need_world_access {
                i.check_world_access()
                    .map_err(|reason| Error::Interpreter {
                        spec: spec.into(),
                        reason,
                    })?;
            }
            return Ok(i);
        }
        let version = spec.strip_prefix("python").unwrap_or(spec);
        let parts: Vec<&str> = version.split('.').collect();
        if version.is_empty()
            || parts.len() > 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(Error::Interpreter {
                spec: spec.into(),
                reason: "expected an absolute path or a version such as 3.11".into(),
            });
        }
        let exe = match parts.len() {
            1 => format!("python{}", parts[0]),
            _ => format!("python{}.{}", parts[0], parts[1]),
        };
        let mut dirs: Vec<PathBuf> = vec!["/usr/bin".into(), "/usr/local/bin".into()];
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                let s = d.to_string_lossy();
                if s.contains("/shims") || !d.is_absolute() || dirs.contains(&d) {
                    continue;
                }
                dirs.push(d);
            }
        }
        let mut tried = Vec::new();
        for d in dirs {
            let candidate = d.join(&exe);
            if !candidate.exists() {
                continue;
            }
            match Interpreter::query(&candidate, cache_dir) {
                Ok(i) => {
                    let full = i.version.split('.').collect::<Vec<_>>();
                    if full.len() < parts.len() || full[..parts.len()] != parts[..] {
                        tried.push(format!("{} is {}", candidate.display(), i.version));
                        continue;
                    }
                    if need_world_access {
                        if let Err(why) = i.check_world_access() {
                            tried.push(why);
                            continue;
                        }
                    }
                    return Ok(i);
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(Error::Interpreter {
            spec: spec.into(),
            reason: if tried.is_empty() {
                format!("no {exe} in /usr/bin, /usr/local/bin or PATH")
            } else {
                format!("no usable {exe}: {}", tried.join("; "))
            },
        })
    }

    /// Checks that an unprivileged uid can run this interpreter and read its
    /// standard library.
    pub fn check_world_access(&self) -> std::result::Result<(), String> {
        check_world_access(&self.base_executable, true)?;
        let stdlib = self
            .base_prefix
            .join("lib")
            .join(format!("python{}.{}", self.major, self.minor));
        if stdlib.exists() {
            check_world_access(&stdlib, false)?;
        }
        Ok(())
    }

    /// `X.Y`.
    pub fn short_version(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_debian_python_and_caches_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let a = Interpreter::query(Path::new("/usr/bin/python3"), Some(dir.path())).unwrap();
        assert_eq!(a.major, 3);
        assert!(a.base_executable.is_absolute());
        assert_eq!(a.markers.sys_platform, "linux");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let b = Interpreter::query(Path::new("/usr/bin/python3"), Some(dir.path())).unwrap();
        assert_eq!(a, b);
        // Debian's python is usable by unprivileged uids.
        a.check_world_access().unwrap();
        let v = Interpreter::find(&a.short_version(), Some(dir.path()), true).unwrap();
        assert_eq!(v.short_version(), a.short_version());
    }

    #[test]
    fn bad_specs_say_why() {
        let e = Interpreter::find("3.x", None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected an absolute path or a version"), "{e}");
        let e = Interpreter::find("2.1", None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("python2.1"), "{e}");
        let e = Interpreter::query(Path::new("/nonexistent/python"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn world_access_names_the_blocking_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "").unwrap();
        let e = check_world_access(&f, false).unwrap_err();
        assert!(e.contains("mode 0700"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_world_access(&f, false).unwrap();
    }
}
