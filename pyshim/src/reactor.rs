//! `Reactor`: the host process's one event thread (io_uring where the kernel has
//! futex ops), bridged to asyncio through an eventfd.

use nodecell_ipc::{EventKind, Reactor, Token};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::channel::PyChannel;

/// The process's reactor (one per process; every `Reactor()` is the same one).
#[pyclass(name = "Reactor", module = "nodecell._nodecell", frozen)]
pub struct PyReactor {
    r: &'static Reactor,
}

#[pymethods]
impl PyReactor {
    #[new]
    fn new() -> PyResult<Self> {
        let r = Reactor::global()
            .map_err(|e| PyOSError::new_err(format!("cannot start the reactor: {e}")))?;
        Ok(PyReactor { r })
    }

    /// The eventfd that becomes readable when events are queued (for `loop.add_reader`).
    fn fileno(&self) -> i32 {
        self.r.event_fd()
    }

    /// Which backend waits: `io_uring`, `futex_waitv` or `poll`.
    #[getter]
    fn backend(&self) -> &'static str {
        self.r.backend().describe()
    }

    /// Starts watching a host channel (its doorbell, and its peer's pidfd if set). Returns a token.
    fn register(&self, channel: &Bound<'_, PyChannel>) -> PyResult<u64> {
        Ok(self.r.register(&channel.get().ch()?).0)
    }

    /// Stops watching.
    fn unregister(&self, token: u64) {
        self.r.deregister(Token(token));
    }

    /// Queued events as `(token, kind)`, kind in `readable`, `died`, `deadline`, `storm`.
    fn drain(&self) -> Vec<(u64, &'static str)> {
        self.r
            .drain()
            .into_iter()
            .map(|e| {
                let kind = match e.kind {
                    EventKind::Readable => "readable",
                    EventKind::PeerExited | EventKind::PeerClosed => "died",
                    EventKind::Deadline(_) => "deadline",
                    EventKind::DoorbellStorm => "storm",
                };
                (e.token.0, kind)
            })
            .collect()
    }
}
