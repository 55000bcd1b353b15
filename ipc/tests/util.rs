//! Real processes for the channel tests: fork a worker, give it its fds, reap it.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nodecell_ipc::{Channel, ChannelConfig, WorkerFds};

/// A forked worker process.
pub struct Worker {
    pub pid: i32,
    reaped: bool,
}

impl Worker {
    /// Waits for the worker to exit (at most `timeout`, then SIGKILL) and returns its
    /// exit code, or 128+signal.
    pub fn wait(mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid out pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                return if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
            }
            if Instant::now() > deadline {
                self.kill();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs the worker (it is reaped by `wait` or on drop).
    pub fn kill(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// CPU time (user+system) the worker has used, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // fields after ')' start at state (3rd field): utime is 14th, stime 15th overall.
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// Writes a message to stderr without locks (safe in a forked child of a threaded process).
pub fn child_say(msg: &str) {
    let m = format!("[worker {}] {msg}\n", std::process::id());
    // SAFETY: write(2) from a live buffer.
    unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
}

/// Closes every fd >= 3 except `keep` (a forked child must not hold other tests' fds:
/// their peers would never see the socket close).
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
    keep.sort_unstable();
    let mut lo: u32 = 3;
    for k in keep {
        if k >= lo {
            if k > lo {
                // SAFETY: closing descriptors this child does not use.
                unsafe { libc::syscall(libc::SYS_close_range, lo, k - 1, 0u32) };
            }
            lo = k + 1;
        }
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0u32) };
}

/// Forks; the child runs `f` with only `keep` fds (plus 0-2) and exits with its code.
pub fn fork_with(keep: &[RawFd], f: impl FnOnce() -> i32) -> Worker {
    // SAFETY: fork in a test process; the child only runs `f` (no locks held by other
    // threads are needed: no stdout/stderr locking, glibc malloc is fork-safe) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain prctl/alarm in the child: die with the parent thread, and never
        // outlive a stuck test by more than 300 s (generous: a loaded CI box is slow).
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::alarm(300);
        }
        close_all_but(keep);
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
            child_say("panicked");
            101
        });
        // SAFETY: leave without running the test harness's atexit/destructors.
        unsafe { libc::_exit(code) };
    }
    Worker { pid, reaped: false }
}

/// Creates a channel and forks a worker that opens it from its fds and runs `f`.
pub fn spawn_worker(cfg: ChannelConfig, f: impl FnOnce(Channel) -> i32) -> (Channel, Worker) {
    let (host, fds) = Channel::create(cfg.clone()).expect("create channel");
    let keep = [fds.ring.as_raw_fd(), fds.sock.as_raw_fd()];
    let w = fork_with(&keep, move || {
        let fds = WorkerFds::from_raw(keep[0], keep[1]).expect("dup fds");
        let ch = match Channel::open(fds, cfg) {
            Ok(c) => c,
            Err(e) => {
                child_say(&format!("open failed: {e}"));
                return 90;
            }
        };
        f(ch)
    });
    drop(fds);
    host.set_peer_pid(w.pid).expect("pidfd");
    (host, w)
}

/// Like [`spawn_worker`] but the child gets the raw fds, to misbehave at the byte level.
pub fn spawn_raw(cfg: ChannelConfig, f: impl FnOnce(WorkerFds) -> i32) -> (Channel, Worker) {
    let (host, fds) = Channel::create(cfg).expect("create channel");
    let keep = [fds.ring.as_raw_fd(), fds.sock.as_raw_fd()];
    let w = fork_with(&keep, move || {
        f(WorkerFds::from_raw(keep[0], keep[1]).expect("dup fds"))
    });
    drop(fds);
    host.set_peer_pid(w.pid).expect("pidfd");
    (host, w)
}

/// A worker loop answering `echo` (returns its args as a tuple), `add` (sum of ints),
/// and `exit`; other frames are ignored.
pub fn echo_worker(ch: Channel) -> i32 {
    use nodecell_ipc::{Frame, Value};
    loop {
        let f = match ch.recv(None) {
            Ok(f) => f,
            Err(e) => {
                child_say(&format!("recv: {e}"));
                return 3;
            }
        };
        if let Frame::Call(c) = f {
            let v = match c.method.as_str() {
                "echo" => Value::Tuple(c.args),
                "add" => Value::Int(
                    c.args
                        .iter()
                        .map(|a| if let Value::Int(i) = a { *i } else { 0 })
                        .sum(),
                ),
                "exit" => {
                    let _ = ch.reply(c.id, Value::None);
                    return 0;
                }
                _ => Value::None,
            };
            if let Err(e) = ch.reply(c.id, v) {
                child_say(&format!("reply: {e}"));
                return 4;
            }
        }
    }
}

/// One blocking call with no callback handling.
pub fn call(ch: &Channel, method: &str, args: Vec<nodecell_ipc::Value>) -> nodecell_ipc::Value {
    let id = ch.next_call_id();
    let c = nodecell_ipc::Call {
        id,
        parent: None,
        target: 0,
        method: method.into(),
        args,
        kwargs: vec![],
        deadline_ns: 0,
    };
    ch.call(c, Some(Duration::from_secs(10)), &mut |_, f| {
        panic!("unexpected frame {f:?}")
    })
    .expect("call")
    .expect("no error")
}
