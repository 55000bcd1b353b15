//! From a pack to a sandbox launch: [`LaunchSettings`] says everything
//! `nodecell run --pack DIR` (or the Python layer) needs to start a command
//! inside the pack's sandbox with its venv.
//!
//! ```no_run
//! use nodecell_provision::{NoEvents, Options, Provisioner};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let p = Provisioner::new(Options { host_python: Some("/usr/bin/python3".into()), ..Options::default() })?;
//! let s = p.launch_settings("/packs/my_pack".as_ref(), &NoEvents)?;
//! // Mount s.readonly_paths read-only at the same paths, then s.writable_paths
//! // writable on top; chdir to s.cwd; drop s.env_remove, set s.env; apply
//! // s.network / s.max_memory / s.max_cpu_percent / s.max_pids / s.timeout /
//! // s.gpu unless the command line overrides them; resolve a bare command
//! // name with s.resolve_program("python").
//! # let _ = s; Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::manifest::Pack;
use crate::provision::Venv;

/// Environment variables a pack's process must not inherit from the host:
/// they would put the host's packages (or another interpreter's) in front of
/// the pack's venv.
pub const ENV_REMOVE: [&str; 11] = [
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONEXECUTABLE",
    "PYTHONPLATLIBDIR",
    "PYTHONSAFEPATH",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CONDA_PYTHON_EXE",
    "__PYVENV_LAUNCHER__",
];

/// The search path inside the sandbox, after the venv's `bin`.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to launch a command in a pack's sandbox.
///
/// Paths are host paths, to be bound at the same path inside the sandbox
/// (the venv's `bin/python` and the shared-torch links are absolute
/// symlinks). The command line's own flags override these values.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchSettings {
    /// The pack's name.
    pub pack: String,
    /// The pack's folder.
    pub pack_dir: PathBuf,
    /// The manifest's `isolated` (the Python layer runs a non-isolated pack
    /// in-process; the launcher ignores it).
    pub isolated: bool,
    /// The provisioned venv (path, key, whether it was a cache hit).
    pub venv: Venv,
    /// The venv's interpreter, `<venv>/bin/python`.
    pub python: PathBuf,
    /// Variables to set (`PATH` with the venv's `bin` first, `VIRTUAL_ENV`,
    /// `PYTHONNOUSERSITE=1`, `PYTHONDONTWRITEBYTECODE=1`, `NODECELL_PACK`,
    /// `NODECELL_PACK_DIR`).
    pub env: Vec<(String, String)>,
    /// Variables to remove before setting `env` ([`ENV_REMOVE`]).
    pub env_remove: Vec<String>,
    /// Bind read-only, same path inside: the venv, the base interpreter's
    /// prefix (its standard library), the shared host torch paths, the pack
    /// folder, and the manifest's `readonly_paths`. Nested duplicates removed.
    pub readonly_paths: Vec<PathBuf>,
    /// Bind writable, after the read-only ones: the manifest's
    /// `writable_paths` (relative ones resolved against the pack folder).
    pub writable_paths: Vec<PathBuf>,
    /// Working directory inside: the pack folder.
    pub cwd: PathBuf,
    /// Keep the network (manifest `sandbox.network`, default false).
    pub network: bool,
    /// Memory limit in bytes.
    pub max_memory: Option<u64>,
    /// CPU limit in percent of one CPU.
    pub max_cpu_percent: Option<f64>,
    /// Process/thread limit.
    pub max_pids: Option<u64>,
    /// Wall-clock limit.
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Option<Duration>,
    /// Give the sandbox the GPU devices.
    pub gpu: bool,
}

fn ser_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Drops paths that another listed path already contains; keeps order.
fn drop_nested(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in &paths {
        if out.iter().any(|q| q == p) {
            continue;
        }
        if paths.iter().any(|q| q != p && p.starts_with(q)) {
            continue;
        }
        out.push(p.clone());
    }
    out
}

impl LaunchSettings {
    /// Settings for `pack` with its provisioned `venv` (no file-system access
    /// beyond resolving paths).
    pub fn new(pack: &Pack, venv: &Venv) -> LaunchSettings {
        let m = &pack.manifest;
        let resolve = |p: &PathBuf| -> PathBuf {
            if p.is_absolute() {
                p.clone()
            } else {
                pack.dir.join(p)
            }
        };
        let bin = venv.path.join("bin");
        let env = vec![
            (
                "PATH".to_string(),
                format!("{}:{SYSTEM_PATH}", bin.display()),
            ),
            ("VIRTUAL_ENV".to_string(), venv.path.display().to_string()),
            ("PYTHONNOUSERSITE".to_string(), "1".to_string()),
            ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
            ("NODECELL_PACK".to_string(), m.name.clone()),
            (
                "NODECELL_PACK_DIR".to_string(),
                pack.dir.display().to_string(),
            ),
        ];
        let mut ro = vec![venv.path.clone(), venv.info.base_prefix.clone()];
        if let Some(dir) = venv.info.base_executable.parent() {
            ro.push(dir.to_path_buf());
        }
        if let Some(t) = &venv.info.shared_torch {
            ro.extend(t.readonly_paths.iter().cloned());
        }
        ro.push(pack.dir.clone());
        ro.extend(m.sandbox.readonly_paths.iter().map(resolve));
        LaunchSettings {
            pack: m.name.clone(),
            pack_dir: pack.dir.clone(),
            isolated: m.isolated,
            venv: venv.clone(),
            python: venv.python.clone(),
            env,
            env_remove: ENV_REMOVE.iter().map(|s| s.to_string()).collect(),
            readonly_paths: drop_nested(ro),
            writable_paths: m.sandbox.writable_paths.iter().map(resolve).collect(),
            cwd: pack.dir.clone(),
            network: m.sandbox.network,
            max_memory: m.sandbox.max_memory,
            max_cpu_percent: m.sandbox.max_cpu_percent,
            max_pids: m.sandbox.max_pids,
            timeout: m.sandbox.timeout,
            gpu: m.sandbox.gpu,
        }
    }

    /// Applies `env_remove` then `env` to a command.
    pub fn apply_env(&self, cmd: &mut Command) {
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    /// The value of `PATH` inside the sandbox.
    pub fn path_var(&self) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(SYSTEM_PATH)
    }

    /// Resolves a command name the way the sandbox's `PATH` would (`python`
    /// → `<venv>/bin/python`); a name with a `/` is returned as is.
    pub fn resolve_program(&self, name: &str) -> Option<PathBuf> {
        if name.contains('/') {
            return Some(PathBuf::from(name));
        }
        self.path_var()
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(p)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_are_dropped() {
        let v = drop_nested(vec![
            "/usr".into(),
            "/usr/bin".into(),
            "/v".into(),
            "/usr".into(),
            "/venv".into(),
        ]);
        assert_eq!(
            v,
            vec![
                PathBuf::from("/usr"),
                PathBuf::from("/v"),
                PathBuf::from("/venv")
            ]
        );
    }
}
