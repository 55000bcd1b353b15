//! nodecell's sandbox launcher: one process tree behind Linux kernel walls.
//!
//! [`launch`] runs a [`Command`] in a sandbox described by a [`Policy`] and
//! returns an [`Outcome`]. The sandbox gets new user, mount, pid, net, ipc
//! and uts namespaces; a read-only minimal root with a private `/tmp`;
//! Landlock rules; no capabilities and `no_new_privs`; a seccomp
//! allow-list; cgroup limits (v2, or v1 on hybrid hosts) over an rlimit
//! floor; a clean environment and no stray fds. Its pid 1 is a tiny init
//! that reaps orphans and forwards signals; the caller stays outside as the
//! supervisor, enforces the timeout and reports how it ended.
//!
//! A wall the kernel cannot provide is never skipped silently:
//! [`Mode::Required`] refuses to run ([`Error::Setup`] naming the wall),
//! [`Mode::BestEffort`] runs and reports it as [`WallState::Missing`].
//! [`probe::probe`] says up front what this kernel and user can enforce.
//!
//! ```no_run
//! use nodecell_sandbox::{launch, Command, Mode, Policy};
//! let policy = Policy::new().ro("/opt/venv").memory(512 << 20).timeout_secs(60.0);
//! let outcome = launch(&policy, &Command::new(["python3", "-c", "print(1)"]))?;
//! std::process::exit(outcome.exit.code);
//! # Ok::<(), nodecell_sandbox::Error>(())
//! ```
//!
//! Each wall has its own module; [`launch`](mod@launch) reads top to
//! bottom. The launching process must be single-threaded: a multi-threaded
//! host (Python with asyncio and torch) starts `nodecell run` as a
//! subprocess instead of calling [`launch`] itself.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod capabilities;
pub mod cgroup;
pub mod confine;
pub mod cpu;
pub mod env;
mod error;
pub mod fds;
pub mod init;
pub mod landlock;
pub mod launch;
pub mod memfd;
pub mod mounts;
pub mod namespaces;
pub mod netns;
pub mod overlay;
pub mod pid1;
pub mod policy;
pub mod probe;
pub mod report;
pub mod rlimits;
pub mod seccomp;
mod supervise;
mod sys;
pub mod trace;
pub mod uids;

pub use error::Error;
pub use launch::{launch, Command, Outcome};
pub use policy::{parse_bytes, Bind, Mode, Policy, PolicyError, Rlimits};
pub use report::{Exit, ExitReason, Wall, WallReport, WallState};

#[cfg(test)]
pub(crate) mod testutil {
    //! Runs a test body in a fresh copy of the test binary, for tests that
    //! change process-wide state (seccomp, Landlock, capabilities, fds).

    const VAR: &str = "NODECELL_SANDBOX_UNIT_CHILD";

    /// Runs `body` in a child test process when called from the parent, or
    /// directly when already in the child. `test` is the test's full path.
    pub fn in_child(test: &str, body: impl FnOnce()) {
        if std::env::var(VAR).as_deref() == Ok(test) {
            body();
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(VAR, test)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "child test {test} failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("1 passed"),
            "child test {test} did not run:\n{stdout}"
        );
    }
}
