//! Finding the uv executable.
//!
//! uv comes from the `uv` package on PyPI (the nodecell wheel depends on it).
//! The places, in order; the first executable file wins:
//!
//! 1. the path given explicitly ([`crate::Options::uv`], `--uv`), else
//!    `$NODECELL_UV`. When one is set it is the only candidate: a wrong
//!    setting is an error naming it, never a silent fallback to another uv;
//! 2. `uv` in each absolute folder of `$PATH`;
//! 3. next to the host's Python (`<folder of host python>/uv`), then
//!    `<host sys.prefix>/bin/uv`: where `pip install uv` into a venv puts it;
//! 4. the `uv` package of the host's Python, asked by running
//!    `uv.find_uv_bin()` in it (user-scheme installs, `pip install --target`,
//!    `--prefix`, ...).
//!
//! The error lists every place searched, in that order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Uv;
use crate::error::{Error, Result};

/// What the search reads from its environment (explicit for tests).
#[derive(Debug, Default, Clone)]
pub(crate) struct Search<'a> {
    /// The explicit setting (`Options::uv`).
    pub explicit: Option<&'a Path>,
    /// `$NODECELL_UV`.
    pub nodecell_uv: Option<OsString>,
    /// `$PATH`.
    pub path: Option<OsString>,
    /// The host's Python.
    pub host_python: Option<&'a Path>,
    /// The host Python's `sys.prefix`.
    pub host_prefix: Option<&'a Path>,
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Uv {
    /// Finds uv (the order is in the module docs). `host_python` is the
    /// interpreter running the host, if known; `host_prefix` its `sys.prefix`.
    pub fn find(
        explicit: Option<&Path>,
        host_python: Option<&Path>,
        host_prefix: Option<&Path>,
    ) -> Result<Uv> {
        Search {
            explicit,
            nodecell_uv: std::env::var_os("NODECELL_UV"),
            path: std::env::var_os("PATH"),
            host_python,
            host_prefix,
        }
        .run()
    }
}

impl Search<'_> {
    /// The fixed paths of steps 2 and 3, in order, without duplicates.
    fn paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        let mut push = |p: PathBuf| {
            if !out.contains(&p) {
                out.push(p);
            }
        };
        if let Some(path) = &self.path {
            for d in std::env::split_paths(path) {
                if d.is_absolute() {
                    push(d.join("uv"));
                }
            }
        }
        if let Some(d) = self.host_python.and_then(Path::parent) {
            push(d.join("uv"));
        }
        if let Some(prefix) = self.host_prefix {
            push(prefix.join("bin").join("uv"));
        }
        out
    }

    pub(crate) fn run(&self) -> Result<Uv> {
        let setting = match (self.explicit, &self.nodecell_uv) {
            (Some(p), _) => Some((p.to_path_buf(), "the uv setting")),
            (None, Some(v)) if !v.is_empty() => Some((PathBuf::from(v), "$NODECELL_UV")),
            _ => None,
        };
        if let Some((p, what)) = setting {
            if is_executable(&p) {
                return Ok(Uv { path: p });
            }
            return Err(Error::UvNotFound {
                tried: vec![format!(
                    "{} (from {what}: not an executable file)",
                    p.display()
                )],
            });
        }
        let mut tried = Vec::new();
        for p in self.paths() {
            if is_executable(&p) {
                return Ok(Uv { path: p });
            }
            tried.push(p.display().to_string());
        }
        if let Some(py) = self.host_python {
            match uv_package_bin(py) {
                Ok(p) if is_executable(&p) => return Ok(Uv { path: p }),
                Ok(p) => tried.push(format!(
                    "{} (named by the `uv` package of {}: not an executable file)",
                    p.display(),
                    py.display()
                )),
                Err(why) => tried.push(format!("the `uv` package of {} ({why})", py.display())),
            }
        }
        Err(Error::UvNotFound { tried })
    }
}

/// Asks `python`'s `uv` package where its binary is (`uv.find_uv_bin()`).
fn uv_package_bin(python: &Path) -> std::result::Result<PathBuf, String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys\ntry:\n import uv\nexcept ImportError as e:\n sys.exit('not installed: %s' % e)\nsys.stdout.write(uv.find_uv_bin())",
        ])
        // A `uv.py` in the current folder must not stand in for the package.
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run it: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or("").trim().to_string();
        return Err(if last.is_empty() {
            format!("exited with {}", out.status)
        } else {
            last
        });
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("answered {:?}, not an absolute path", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn exe(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn places(e: Error) -> Vec<String> {
        match e {
            Error::UvNotFound { tried } => tried,
            other => panic!("expected UvNotFound, got {other}"),
        }
    }

    #[test]
    fn path_comes_before_the_host_python_and_relative_entries_are_ignored() {
        let t = tempfile::tempdir().unwrap();
        let on_path = t.path().join("path");
        let venv = t.path().join("venv/bin");
        std::fs::create_dir_all(&on_path).unwrap();
        std::fs::create_dir_all(&venv).unwrap();
        let a = exe(&on_path, "uv", "");
        exe(&venv, "uv", "");
        let py = venv.join("python");
        let s = Search {
            path: Some(std::env::join_paths(["relative/dir".as_ref(), on_path.as_path()]).unwrap()),
            host_python: Some(&py),
            ..Search::default()
        };
        assert_eq!(s.run().unwrap().path, a);
        assert!(!s.paths().iter().any(|p| p.starts_with("relative")));
    }

    #[test]
    fn found_next_to_the_host_python_then_under_its_prefix() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("venv/bin");
        let prefix = t.path().join("prefix");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        let py = bin.join("python");
        let under_prefix = exe(&prefix.join("bin"), "uv", "");
        let s = Search {
            host_python: Some(&py),
            host_prefix: Some(&prefix),
            ..Search::default()
        };
        // Nothing next to the python yet (and the python does not exist, so no package step
        // can answer): the prefix's bin/uv wins.
        assert_eq!(s.run().unwrap().path, under_prefix);
        let next_to = exe(&bin, "uv", "");
        assert_eq!(s.run().unwrap().path, next_to);
    }

    #[test]
    fn a_wrong_setting_is_an_error_naming_it_not_a_fallback() {
        let t = tempfile::tempdir().unwrap();
        let good = exe(t.path(), "uv", "");
        let not_exec = t.path().join("uv-not-exec");
        std::fs::write(&not_exec, "").unwrap();
        let path = Some(t.path().as_os_str().to_owned());
        let s = Search {
            explicit: Some(&not_exec),
            path: path.clone(),
            ..Search::default()
        };
        let tried = places(s.run().unwrap_err());
        assert_eq!(tried.len(), 1, "{tried:?}");
        assert!(tried[0].contains("uv-not-exec") && tried[0].contains("the uv setting"));
        let s = Search {
            nodecell_uv: Some("/nonexistent/uv".into()),
            path,
            ..Search::default()
        };
        let tried = places(s.run().unwrap_err());
        assert!(tried[0].contains("/nonexistent/uv") && tried[0].contains("$NODECELL_UV"));
        // An empty $NODECELL_UV counts as unset.
        let s = Search {
            nodecell_uv: Some("".into()),
            path: Some(t.path().as_os_str().to_owned()),
            ..Search::default()
        };
        assert_eq!(s.run().unwrap().path, good);
    }

    #[test]
    fn the_uv_package_of_the_host_python_is_asked_last() {
        let t = tempfile::tempdir().unwrap();
        // A stand-in interpreter whose `uv` package answers with a path, as
        // `uv.find_uv_bin()` does for a user-scheme install.
        let user_bin = t.path().join("user/bin");
        std::fs::create_dir_all(&user_bin).unwrap();
        let uv = exe(&user_bin, "uv", "");
        let py = exe(
            t.path(),
            "python",
            &format!("#!/bin/sh\nprintf %s '{}'\n", uv.display()),
        );
        let s = Search {
            path: Some(t.path().join("empty").into_os_string()),
            host_python: Some(&py),
            ..Search::default()
        };
        assert_eq!(s.run().unwrap().path, uv);
    }

    #[test]
    fn not_found_lists_every_place_in_order() {
        let t = tempfile::tempdir().unwrap();
        let py = exe(
            t.path(),
            "python",
            "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'uv'\" >&2\nexit 1\n",
        );
        let prefix = t.path().join("prefix");
        let s = Search {
            path: Some(std::env::join_paths(["/nowhere/a", "/nowhere/b"]).unwrap()),
            host_python: Some(&py),
            host_prefix: Some(&prefix),
            ..Search::default()
        };
        let tried = places(s.run().unwrap_err());
        assert_eq!(
            tried,
            vec![
                "/nowhere/a/uv".to_string(),
                "/nowhere/b/uv".to_string(),
                t.path().join("uv").display().to_string(),
                prefix.join("bin/uv").display().to_string(),
                format!(
                    "the `uv` package of {} (ModuleNotFoundError: No module named 'uv')",
                    py.display()
                ),
            ]
        );
        let msg = Error::UvNotFound { tried }.to_string();
        assert!(
            msg.contains("/nowhere/b/uv") && msg.contains("pip install uv"),
            "{msg}"
        );
    }

    #[test]
    fn a_real_interpreter_without_the_uv_package_says_so() {
        // Debian's python3.11 (what the tests' venvs are made from) has no `uv` package.
        let py = Path::new("/usr/bin/python3.11");
        assert!(
            py.is_file(),
            "/usr/bin/python3.11 is missing: run scripts/setup.sh"
        );
        let why = uv_package_bin(py).unwrap_err();
        assert!(why.starts_with("not installed:"), "{why}");
    }
}
