//! The pid-1 wall: the sandbox's init (a copy of the launcher) cannot be
//! inspected or written by the worker, and holds nothing of the host that a
//! look at it could show.
//!
//! * `PR_SET_DUMPABLE 0`: `/proc/1/{mem,environ,fd,maps,root,cwd}` and
//!   ptrace-style access need `CAP_SYS_PTRACE` over the init's memory, whose
//!   user namespace is the launcher's (the host's): the worker never has it,
//!   in either mode. Without this a rootless worker (same uid as the init)
//!   could read the caller's whole environment from `/proc/1/environ` and
//!   write the report pipe through `/proc/1/fd`.
//! * The argv and environment strings the kernel shows in
//!   `/proc/1/cmdline` (and would show in `/proc/1/environ`) are overwritten
//!   in place: `cmdline` reads `nodecell-init`, the environment is zeros.
//! * The thread name (`comm`) is `nodecell-init`.
//!
//! Applied right after the launcher wrote the uid/gid maps (a non-dumpable
//! child's `/proc/<pid>/uid_map` belongs to host root, which a rootless
//! launcher is not) and before the command exists.

use crate::sys;

/// What pid 1 is called inside (`/proc/1/cmdline` and `/proc/1/comm`).
pub const INIT_NAME: &str = "nodecell-init";

/// The addresses of this process's argv and environment strings, fields
/// 48-51 of `/proc/self/stat`: (arg_start, arg_end, env_start, env_end).
pub fn string_areas(stat: &str) -> Option<(usize, usize, usize, usize)> {
    // Fields after the command name (which may contain spaces) start at 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field n is f[n - 3].
    let get = |n: usize| f.get(n - 3)?.parse::<usize>().ok();
    let a = (get(48)?, get(49)?, get(50)?, get(51)?);
    (a.0 <= a.1 && a.2 <= a.3).then_some(a)
}

/// Makes the calling process (the init) unreadable and scrubs what it shows.
/// Returns a description for the report.
pub fn hide() -> Result<String, Pid1Error> {
    sys::set_dumpable(false).map_err(|e| Pid1Error::Dumpable(e.to_string()))?;
    if sys::dumpable().map_err(|e| Pid1Error::Dumpable(e.to_string()))? {
        return Err(Pid1Error::Dumpable(
            "still dumpable after PR_SET_DUMPABLE 0".into(),
        ));
    }
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| Pid1Error::Scrub(format!("reading /proc/self/stat: {e}")))?;
    let (arg_start, arg_end, env_start, env_end) = string_areas(&stat).ok_or_else(|| {
        Pid1Error::Scrub("no argv/environment addresses in /proc/self/stat".into())
    })?;
    let mut name = INIT_NAME.as_bytes().to_vec();
    name.push(0);
    // SAFETY: our initial argv/env strings on our own stack (where the kernel put them);
    // glibc and Rust hold only raw pointers to them, which stay valid.
    unsafe {
        sys::overwrite_bytes(arg_start, arg_end - arg_start, &name);
        sys::overwrite_bytes(env_start, env_end - env_start, &[]);
    }
    let comm = std::ffi::CString::new(INIT_NAME).expect("no NUL in the init's name");
    sys::set_thread_name(&comm).map_err(|e| Pid1Error::Scrub(format!("PR_SET_NAME: {e}")))?;
    Ok(format!(
        "pid 1 not dumpable; its argv and {} bytes of environment scrubbed",
        env_end - env_start
    ))
}

/// Errors of the pid-1 wall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pid1Error {
    /// `PR_SET_DUMPABLE` failed or did not stick.
    #[error("making pid 1 non-dumpable: {0}")]
    Dumpable(String),
    /// The argv/environment could not be scrubbed.
    #[error("scrubbing pid 1's argv and environment: {0}")]
    Scrub(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_the_command_name() {
        // A command name with spaces and parentheses, then fields 3..=52.
        let mut s = String::from("123 (a (b) c) S");
        for n in 4..=52 {
            s.push_str(&format!(" {}", n * 10));
        }
        assert_eq!(string_areas(&s), Some((480, 490, 500, 510)));
        assert_eq!(string_areas("1 (x) S 2 3"), None);
    }

    #[test]
    fn hide_scrubs_cmdline_and_environ() {
        crate::testutil::in_child("pid1::tests::hide_scrubs_cmdline_and_environ", || {
            // The harness put its marker variable in our environment block.
            let before = std::fs::read("/proc/self/environ").unwrap();
            assert!(String::from_utf8_lossy(&before).contains("NODECELL_SANDBOX_UNIT_CHILD"));
            let detail = hide().unwrap();
            assert!(detail.contains("not dumpable"), "{detail}");
            let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
            let shown: Vec<&[u8]> = cmdline
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .collect();
            assert_eq!(shown, [INIT_NAME.as_bytes()]);
            let environ = std::fs::read("/proc/self/environ").unwrap();
            assert!(
                environ.iter().all(|&b| b == 0),
                "environment left: {environ:?}"
            );
            // The harness runs the body on a thread; the init is single-threaded.
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            assert_eq!(comm.trim(), INIT_NAME);
            assert!(!sys::dumpable().unwrap());
        });
    }
}
