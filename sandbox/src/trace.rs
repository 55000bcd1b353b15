//! `NODECELL_TRACE_LAUNCH=1`: one line on stderr per launch phase, with the
//! time since [`launch`](crate::launch()) began, from the launcher and from
//! the sandbox's init, for finding where a launch spends its time. Off (one
//! relaxed load per phase) unless the variable is set in the launcher's
//! environment; the command never sees it (the environment wall).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The variable that turns tracing on.
pub const VAR: &str = "NODECELL_TRACE_LAUNCH";

static ON: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();

/// Reads [`VAR`] and starts the clock (the launcher, before anything else).
pub fn start() {
    if std::env::var_os(VAR).is_some_and(|v| !v.is_empty() && v != "0") {
        let _ = START.set(Instant::now());
        ON.store(true, Ordering::Relaxed);
    }
}

/// Prints `what` with the time since [`start`] when tracing is on. `side` is
/// `launcher` or `init`.
pub fn mark(side: &str, what: &str) {
    if ON.load(Ordering::Relaxed) {
        if let Some(t) = START.get() {
            // One `write` per line: the launcher and the init write to the
            // same stderr at the same time, and `eprintln!` may split a
            // line into several writes.
            let line = format!(
                "nodecell-trace {:9.3} ms {side:8} {what}\n",
                t.elapsed().as_secs_f64() * 1e3
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        }
    }
}
