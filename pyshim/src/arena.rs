//! `Arena` (storage this process owns) and `View` (a received tensor's storage).
//!
//! Both expose `address` and `nbytes`; the Python layer wraps the memory with a
//! ctypes array that keeps the object alive (the limited API of Python 3.9 has
//! no buffer protocol for extension types), so numpy and torch see it without
//! a copy.

use std::sync::Arc;

use nodecell_ipc::{Arena as IpcArena, ArenaState, Channel, TensorDesc, TensorView};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// Storage this process owns: a memfd, mapped here, sealed before it is shared.
#[pyclass(name = "Arena", module = "nodecell._nodecell", frozen, weakref, dict)]
pub struct PyArena {
    pub(crate) inner: Arc<IpcArena>,
}

#[pymethods]
impl PyArena {
    /// A new arena of `nbytes`, pre-faulted, sealed so that peers can only read it
    /// (or, with `shared_writable`, write it: an output buffer). This process keeps
    /// its read-write mapping.
    #[new]
    #[pyo3(signature = (nbytes, shared_writable = false))]
    fn new(py: Python<'_>, nbytes: usize, shared_writable: bool) -> PyResult<Self> {
        let inner = py
            .detach(|| -> Result<Arc<IpcArena>, nodecell_ipc::ArenaError> {
                let a = IpcArena::create(nbytes)?;
                if shared_writable {
                    a.seal_output()?;
                } else {
                    a.seal_read_only()?;
                }
                Ok(a)
            })
            .map_err(|e| PyOSError::new_err(format!("arena of {nbytes} bytes: {e}")))?;
        Ok(PyArena { inner })
    }

    /// An immutable (write-sealed) arena holding a copy of `nbytes` bytes at
    /// `address`. The caller keeps that memory alive and unchanged during the call.
    #[staticmethod]
    fn frozen_copy_from(py: Python<'_>, address: usize, nbytes: usize) -> PyResult<Self> {
        if nbytes == 0 {
            return Err(PyValueError::new_err("an arena cannot be empty"));
        }
        if address == 0 {
            return Err(PyValueError::new_err("null address"));
        }
        // SAFETY: the Python caller passes the data pointer and size of a live,
        // contiguous numpy array / torch tensor and holds a reference to it for the
        // duration of this call, so the range is readable for `nbytes` bytes.
        let src: &[u8] = unsafe { std::slice::from_raw_parts(address as *const u8, nbytes) };
        let inner = py
            .detach(|| -> Result<Arc<IpcArena>, nodecell_ipc::ArenaError> {
                let a = IpcArena::create_with(nbytes, false)?;
                a.write(0, src)?;
                a.freeze()?;
                Ok(a)
            })
            .map_err(|e| PyOSError::new_err(format!("frozen arena of {nbytes} bytes: {e}")))?;
        Ok(PyArena { inner })
    }

    /// Address of this process's mapping.
    #[getter]
    fn address(&self) -> usize {
        self.inner.as_ptr() as usize
    }

    /// Size in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.len()
    }

    /// Process-unique id.
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id()
    }

    /// Whether peers may write it (an output buffer).
    #[getter]
    fn shared_writable(&self) -> bool {
        self.inner.state() == ArenaState::Output
    }

    /// Whether this process may write through `address` (false once frozen).
    #[getter]
    fn writable(&self) -> bool {
        self.inner.state() != ArenaState::Frozen
    }

    /// `open`, `read-only`, `output` or `frozen`.
    #[getter]
    fn state(&self) -> &'static str {
        match self.inner.state() {
            ArenaState::Open => "open",
            ArenaState::ReadOnly => "read-only",
            ArenaState::Output => "output",
            ArenaState::Frozen => "frozen",
        }
    }

    fn __repr__(&self) -> String {
        format!("<nodecell Arena #{} {} bytes {}>", self.inner.id(), self.inner.len(), self.state())
    }
}

/// A received tensor's storage: a mapping of the peer's arena (read-only,
/// copy-on-write, or writable-shared for output buffers). Dropping the last
/// reference gives the descriptor back to the peer.
#[pyclass(name = "View", module = "nodecell._nodecell", frozen, weakref, dict)]
pub struct PyView {
    pub(crate) view: TensorView,
    /// The channel it came from and the descriptor to release (None: nothing to release).
    pub(crate) release: Option<(Channel, TensorDesc)>,
    /// The channel's id (echoing back is only possible on that channel).
    pub(crate) channel_id: u64,
    /// The descriptor to base an echo on (None: cannot be echoed).
    pub(crate) echo: Option<TensorDesc>,
}

#[pymethods]
impl PyView {
    /// Address of the first byte the descriptor covers.
    #[getter]
    fn address(&self) -> usize {
        self.view.as_ptr() as usize
    }

    /// Bytes the descriptor covers.
    #[getter]
    fn nbytes(&self) -> usize {
        self.view.len()
    }

    /// Whether writes through `address` are allowed (copy-on-write or output buffer).
    #[getter]
    fn writable(&self) -> bool {
        self.view.writable()
    }

    /// Whether writes reach the owner (an output buffer mapped writable-shared).
    #[getter]
    fn shared_writable(&self) -> bool {
        self.view.desc().writable && self.view.writable()
    }

    /// The id of the channel it arrived on.
    #[getter]
    fn channel_id(&self) -> u64 {
        self.channel_id
    }

    fn __repr__(&self) -> String {
        format!("<nodecell View {} bytes writable={}>", self.view.len(), self.view.writable())
    }
}

impl Drop for PyView {
    fn drop(&mut self) {
        if let Some((ch, desc)) = self.release.take() {
            // Gives the reference back (sent with the next frame if the ring is busy).
            let _ = ch.release(&desc);
        }
    }
}
