//! What the developer tools need from Rust in the host: the lock-free call
//! counters `nodecell top` reads ([`PyCallStats`], `CallStats`) and where
//! this process publishes its tools socket ([`tools_socket_path`]). The
//! facts themselves live in the `nodecell-tools` crate, shared with the CLI.

use nodecell_tools::hist::Histogram;
use nodecell_tools::socket;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Call counters of one extension: calls, errors, a latency histogram.
/// Recording is a few relaxed atomic increments (no lock, no allocation);
/// any thread may read while others record.
#[pyclass(frozen, module = "nodecell._nodecell", name = "CallStats")]
pub struct PyCallStats {
    calls: AtomicU64,
    errors: AtomicU64,
    hist: Histogram,
}

impl PyCallStats {
    /// Count one finished call that took `ns` nanoseconds (`error`: it raised).
    pub(crate) fn record_call(&self, ns: u64, error: bool) {
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.hist.record(ns);
    }
}

#[pymethods]
impl PyCallStats {
    #[new]
    fn new() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hist: Histogram::new(),
        }
    }

    /// Count one finished call that took `ns` nanoseconds.
    fn record(&self, ns: u64) {
        self.record_call(ns, false);
    }

    /// Count one finished call that took `ns` nanoseconds and raised.
    fn record_error(&self, ns: u64) {
        self.record_call(ns, true);
    }

    /// Calls counted.
    #[getter]
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Of those, calls that raised.
    #[getter]
    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The latency histogram as sparse `(bucket, count)` pairs (`nodecell_tools::hist`).
    fn latency(&self) -> Vec<(u32, u64)> {
        self.hist.sparse()
    }

    /// The `q`-quantile of the latencies in nanoseconds (the middle of its bucket), or None.
    fn quantile(&self, q: f64) -> Option<u64> {
        nodecell_tools::hist::Counts(self.hist.sparse()).quantile(q)
    }
}

/// Where process `pid` publishes its tools socket, or None when the
/// `NODECELL_TOOLS` switch is off. The directory is created (mode 0700) and
/// checked to be private to this user; OSError names it when it is not.
#[pyfunction]
pub fn tools_socket_path(pid: u32) -> PyResult<Option<String>> {
    if !socket::enabled() {
        return Ok(None);
    }
    let dir = socket::socket_dir();
    socket::check_dir(&dir, true).map_err(|e| PyOSError::new_err(e.to_string()))?;
    Ok(Some(
        socket::socket_path(&dir, pid)
            .to_string_lossy()
            .into_owned(),
    ))
}

/// Register the tools' classes and functions in `_nodecell`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCallStats>()?;
    m.add_function(wrap_pyfunction!(tools_socket_path, m)?)?;
    Ok(())
}
