//! `FastCall`: the host's common case of `await ext.method(...)` in one Rust call.
//!
//! An `Extension` owns one. While it is *armed* (the Python layer arms it with the
//! extension's only worker when the general path found the fast one allowed: one
//! isolated worker, no hot reload, the cell served by the calling loop), a call checks
//! what can change between calls (the profiler's `ACTIVE`, the running loop, the
//! worker's `alive` / `dead` / `spin_ns`, the worker's receive lock), takes the next id
//! from the endpoint's own counter, makes the call with [`PyChannel::spin_call`] and
//! returns the value or raises the worker's error: no Python frame in between. What
//! the common case does not cover goes back to the Python layer unchanged:
//!
//! | case | returns |
//! |---|---|
//! | not armed, or a check failed (nothing was sent) | the `not_sent` marker (`_NOT_SENT`) |
//! | sent, the answer did not come in the spin (or another frame came first, or receiving broke) | `after_spin(w, call_id, state, payload, more, elapsed_ns)`, called with the receive lock held (it releases it) |
//! | sending raised | `send_failed(w, call_id, method, exc)`, the lock released |
//!
//! The per-call loop check is cheap and one-sided: "this is the thread that armed it and
//! the loop still runs" is also true when the loop was stopped here and now runs on
//! another thread while this one runs a loop of its own (`asyncio.run` per request in a
//! thread pool). Telling the two apart needs `asyncio.get_running_loop()` (a `getpid`
//! syscall per call in CPython 3.11), so the fast path does not: what it does on such a
//! thread is what a synchronous waiter does (send, spin, take its own answer), and what
//! touches the loop is left to the continuations, which look at the running loop (they
//! are slow paths) and hand the rest to the sandbox's loop thread-safely; so does
//! `w.drain_soon()` for frames found behind the answer. The general path arms it again
//! for the loop's new thread on its first call there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyString, PyTuple};
use pyo3::PyTraverseError;

use crate::channel::{PyChannel, CALL_DONE, CALL_FAILED};
use crate::tools::PyCallStats;

/// The worker a fast call goes to, and what the call needs of it.
struct Armed {
    /// The Python `_Worker`.
    w: Py<PyAny>,
    channel: Py<PyChannel>,
    rx_acquire: Py<PyAny>,
    rx_release: Py<PyAny>,
    /// The loop serving the worker's cell.
    lp: Py<PyAny>,
    /// The worker's endpoint (`_release_queue`, `flush_releases`).
    ep: Py<PyAny>,
    /// The endpoint's call-id counter (`itertools.count`), shared with its other callers.
    ids: Py<PyIterator>,
    /// The thread that armed it: the loop's (arming happens on the running loop).
    thread: std::thread::ThreadId,
    /// [`FORKS`] when armed: a forked child never takes the fast path.
    forks: u64,
}

/// Forks of this process seen by a child (a fork handler counts them).
static FORKS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn forked_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The host's fast path for one extension's calls (see the module docs).
#[pyclass(name = "FastCall", module = "nodecell._nodecell", frozen)]
pub struct FastCall {
    armed: Mutex<Option<Arc<Armed>>>,
    target: u64,
    not_sent: Py<PyAny>,
    after_spin: Py<PyAny>,
    send_failed: Py<PyAny>,
    /// The profiler's module: calls take the general path while its `ACTIVE` is true.
    profile: Py<PyAny>,
    stats: Py<PyCallStats>,
    /// Calls answered here without a Python continuation (for tests and tools).
    answered: AtomicU64,
}

#[pymethods]
impl FastCall {
    /// `target`: the handle id calls go to; `not_sent`: what a call that sent nothing
    /// returns; `after_spin` / `send_failed`: the Python layer's continuations (see the
    /// module docs); `profile`: the module whose `ACTIVE` turns the fast path off;
    /// `stats`: where answered calls are counted.
    #[new]
    fn new(
        target: u64,
        not_sent: Py<PyAny>,
        after_spin: Py<PyAny>,
        send_failed: Py<PyAny>,
        profile: Py<PyAny>,
        stats: Py<PyCallStats>,
    ) -> PyResult<Self> {
        Ok(FastCall {
            armed: Mutex::new(None),
            target,
            not_sent,
            after_spin,
            send_failed,
            profile,
            stats,
            answered: AtomicU64::new(0),
        })
    }

    /// Send calls to worker `w` from now on (`channel`, `rx`: its receive lock, `lp`:
    /// the loop serving its cell, `ep`: its endpoint, `ids`: the endpoint's call-id
    /// iterator). Called on the thread running `lp`, while it runs.
    fn arm(
        &self,
        w: Py<PyAny>,
        channel: Py<PyChannel>,
        rx: &Bound<'_, PyAny>,
        lp: Py<PyAny>,
        ep: Py<PyAny>,
        ids: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let armed = Armed {
            w,
            channel,
            rx_acquire: rx.getattr("acquire")?.unbind(),
            rx_release: rx.getattr("release")?.unbind(),
            lp,
            ep,
            ids: ids.cast::<PyIterator>()?.clone().unbind(),
            thread: std::thread::current().id(),
            forks: FORKS.load(Ordering::Relaxed),
        };
        static FORK_HANDLER: std::sync::Once = std::sync::Once::new();
        FORK_HANDLER.call_once(|| {
            if !crate::sys::alloc::on_fork_child(forked_child) {
                // Without the handler a child cannot tell: count it as forked already.
                FORKS.fetch_add(1, Ordering::Relaxed);
            }
        });
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(armed));
        Ok(())
    }

    /// Every call takes the general path until armed again.
    fn disarm(&self) {
        self.armed.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether calls take the fast path (before the per-call checks).
    #[getter]
    fn armed(&self) -> bool {
        self.armed_now().is_some()
    }

    /// Calls answered by the fast path itself (answer or error within the spin, no
    /// Python continuation), since this object was made.
    #[getter]
    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Calls `method(*args, **kwargs)` on the armed worker (see the module docs).
    fn __call__(
        &self,
        py: Python<'_>,
        method: &Bound<'_, PyString>,
        args: &Bound<'_, PyAny>,
        kwargs: &Bound<'_, PyDict>,
    ) -> PyResult<Py<PyAny>> {
        let Some(a) = self.armed_now() else {
            return Ok(self.not_sent.clone_ref(py));
        };
        if !self.allowed(py, &a)? {
            return Ok(self.not_sent.clone_ref(py));
        }
        let w = a.w.bind(py);
        let spin_ns: i64 = w.getattr(intern!(py, "spin_ns"))?.extract()?;
        if spin_ns <= 0 || !a.rx_acquire.call1(py, (false,))?.is_truthy(py)? {
            return Ok(self.not_sent.clone_ref(py));
        }
        // The receive lock is ours: every way out below releases it or hands it on.
        let call_id = match next_id(py, &a) {
            Ok(id) => id,
            Err(e) => {
                a.rx_release.call0(py)?;
                return Err(e);
            }
        };
        let sent = method.extract::<String>().and_then(|m| {
            let tuple;
            let args = match args.cast::<PyTuple>() {
                Ok(t) => t,
                Err(_) => {
                    tuple = PyTuple::new(py, args.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
                    &tuple
                }
            };
            a.channel.get().spin_call(
                py,
                call_id,
                self.target,
                m,
                args,
                kwargs,
                spin_ns as u64,
                Some(self.stats.get()),
            )
        });
        let (state, payload, more, elapsed, next) = match sent {
            Ok(got) => got,
            Err(e) => {
                a.rx_release.call0(py)?;
                return self
                    .send_failed
                    .call1(py, (w, call_id, method, e.into_value(py)));
            }
        };
        if let Err(e) = w.setattr(intern!(py, "spin_ns"), next) {
            a.rx_release.call0(py)?;
            return Err(e);
        }
        if state > CALL_FAILED {
            return self
                .after_spin
                .call1(py, (w, call_id, state, payload, more, elapsed));
        }
        a.rx_release.call0(py)?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        if more {
            // From any thread: this may not be the loop's (see the module docs).
            w.call_method0(intern!(py, "drain_soon"))?;
        }
        let ep = a.ep.bind(py);
        if ep.getattr(intern!(py, "_release_queue"))?.is_truthy()? {
            ep.call_method0(intern!(py, "flush_releases"))?;
        }
        if state == CALL_DONE {
            Ok(payload)
        } else {
            Err(PyErr::from_value(payload.into_bound(py)))
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.not_sent)?;
        visit.call(&self.after_spin)?;
        visit.call(&self.send_failed)?;
        visit.call(&self.profile)?;
        visit.call(&self.stats)?;
        // Held only for a moment by a caller (with the GIL): skip it then.
        if let Ok(armed) = self.armed.try_lock() {
            if let Some(a) = armed.as_ref() {
                visit.call(&a.w)?;
                visit.call(&a.channel)?;
                visit.call(&a.rx_acquire)?;
                visit.call(&a.rx_release)?;
                visit.call(&a.lp)?;
                visit.call(&a.ep)?;
                visit.call(&a.ids)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.disarm();
    }
}

impl FastCall {
    fn armed_now(&self) -> Option<Arc<Armed>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The per-call checks: profiler off, the cell's loop running here, worker alive.
    fn allowed(&self, py: Python<'_>, a: &Armed) -> PyResult<bool> {
        if self
            .profile
            .bind(py)
            .getattr(intern!(py, "ACTIVE"))?
            .is_truthy()?
        {
            return Ok(false);
        }
        // Armed on this thread, whose loop the cell's was, and that loop still runs: almost
        // always the running one here; when it was moved to another thread meanwhile, the
        // call is still safe to make (see the module docs). Not
        // `asyncio.get_running_loop()`: in CPython 3.11 that costs a `getpid` syscall per
        // call (0.3-0.6 us on a VM). Anything else: the general path.
        if std::thread::current().id() != a.thread
            || FORKS.load(Ordering::Relaxed) != a.forks
            || !a
                .lp
                .bind(py)
                .call_method0(intern!(py, "is_running"))?
                .is_truthy()?
        {
            return Ok(false);
        }
        let w = a.w.bind(py);
        Ok(w.getattr(intern!(py, "alive"))?.is_truthy()?
            && !w.getattr(intern!(py, "dead"))?.is_truthy()?)
    }
}

/// The endpoint's next call id.
fn next_id(py: Python<'_>, a: &Armed) -> PyResult<u64> {
    let mut ids = a.ids.bind(py).clone();
    match ids.next() {
        Some(id) => id?.extract(),
        None => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "the endpoint's call ids ran out",
        )),
    }
}
