//! `Arena` (storage this process owns) and `View` (a received tensor's storage).
//!
//! Both expose `address` and `nbytes`; the Python layer wraps the memory with a
//! ctypes array that keeps the object alive (the limited API of Python 3.9 has
//! no buffer protocol for extension types), so numpy and torch see it without
//! a copy.

use std::sync::Arc;

use nodecell_ipc::{Arena as IpcArena, ArenaState, TensorDesc, TensorView, WeakChannel};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::dlpack::{self, Keep};

/// Storage this process owns: a memfd, mapped here, sealed before it is shared.
#[pyclass(name = "Arena", module = "nodecell._nodecell", frozen, weakref)]
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
        dlpack::register_arena(&inner);
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
        // SAFETY: the caller passes the data pointer and size of a live contiguous array/tensor
        // it keeps referenced during this call: `nbytes` readable bytes.
        let src: &[u8] = unsafe { std::slice::from_raw_parts(address as *const u8, nbytes) };
        let inner = py
            .detach(|| -> Result<Arc<IpcArena>, nodecell_ipc::ArenaError> {
                let a = IpcArena::create_with(nbytes, false)?;
                a.write(0, src)?;
                a.freeze()?;
                Ok(a)
            })
            .map_err(|e| PyOSError::new_err(format!("frozen arena of {nbytes} bytes: {e}")))?;
        dlpack::register_arena(&inner);
        Ok(PyArena { inner })
    }

    /// A DLPack capsule (for ``torch._C._from_dlpack`` / ``numpy.from_dlpack``) over
    /// this arena's bytes from ``offset``: ``dtype`` name, ``shape``, ``strides`` in
    /// elements (None: C-contiguous). Checked against the arena's size.
    #[pyo3(signature = (offset, dtype, shape, strides = None))]
    fn dlpack(
        &self,
        py: Python<'_>,
        offset: u64,
        dtype: &str,
        shape: Vec<u64>,
        strides: Option<Vec<i64>>,
    ) -> PyResult<Py<PyAny>> {
        let (data, dt, shape, strides) = checked(&self.inner, offset, dtype, shape, strides)?;
        dlpack::capsule(
            py,
            Keep::Arena(self.inner.clone()),
            data,
            dt,
            &shape,
            &strides,
        )
    }

    /// Like ``dlpack`` but a producer object (``__dlpack__``/``__dlpack_device__``),
    /// for ``numpy.from_dlpack`` (writable unless ``readonly``).
    #[pyo3(signature = (offset, dtype, shape, strides = None, readonly = false))]
    fn dlsource(
        &self,
        offset: u64,
        dtype: &str,
        shape: Vec<u64>,
        strides: Option<Vec<i64>>,
        readonly: bool,
    ) -> PyResult<dlpack::DLSource> {
        let (data, dt, shape, strides) = checked(&self.inner, offset, dtype, shape, strides)?;
        Ok(dlpack::DLSource::new(
            Keep::Arena(self.inner.clone()),
            data,
            dt,
            shape,
            strides,
            readonly,
        ))
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

    /// `open`, `read-only`, `output`, `frozen` or `pooled`.
    #[getter]
    fn state(&self) -> &'static str {
        match self.inner.state() {
            ArenaState::Open => "open",
            ArenaState::ReadOnly => "read-only",
            ArenaState::Output => "output",
            ArenaState::Frozen => "frozen",
            ArenaState::Pooled => "pooled",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<nodecell Arena #{} {} bytes {}>",
            self.inner.id(),
            self.inner.len(),
            self.state()
        )
    }
}

/// A received tensor's storage and what to do when it is no longer used.
pub struct ViewKeep {
    /// The mapping and validated descriptor.
    pub(crate) view: TensorView,
    /// The channel it came from and the descriptor to release (None: nothing to
    /// release). Weak: a tensor kept by user code must not keep a dead worker's
    /// channel open.
    pub(crate) release: Option<(WeakChannel, TensorDesc)>,
    /// The channel's id (echoing back is only possible on that channel).
    pub(crate) channel_id: u64,
    /// The descriptor to base an echo on (None: cannot be echoed).
    pub(crate) echo: Option<TensorDesc>,
    /// When the storage is one of our own arenas that came back (mapped
    /// copy-on-write): that arena and the view's byte offset in it, to share again.
    pub(crate) own: Option<(Arc<IpcArena>, u64)>,
}

impl Drop for ViewKeep {
    fn drop(&mut self) {
        if let Some((ch, desc)) = self.release.take() {
            // Gives the reference back with the next frame this side sends (or the
            // next idle flush): no extra doorbell for the peer per tensor.
            if let Some(ch) = ch.upgrade() {
                let _ = ch.release_lazy(&desc);
            }
        }
    }
}

/// A received tensor's storage: a mapping of the peer's arena (copy-on-write, or
/// writable-shared for output buffers). When the last tensor over it and this
/// object are gone, the descriptor is given back to the peer.
#[pyclass(name = "View", module = "nodecell._nodecell", frozen, weakref)]
pub struct PyView {
    pub(crate) keep: Arc<ViewKeep>,
}

#[pymethods]
impl PyView {
    /// Address of the first byte the descriptor covers.
    #[getter]
    fn address(&self) -> usize {
        self.keep.view.as_ptr() as usize
    }

    /// Bytes the descriptor covers.
    #[getter]
    fn nbytes(&self) -> usize {
        self.keep.view.len()
    }

    /// Whether writes through ``address`` are allowed (copy-on-write or output buffer).
    #[getter]
    fn writable(&self) -> bool {
        self.keep.view.writable()
    }

    /// Whether writes reach the owner (an output buffer mapped writable-shared).
    #[getter]
    fn shared_writable(&self) -> bool {
        self.keep.view.desc().writable && self.keep.view.writable()
    }

    /// The id of the channel it arrived on.
    #[getter]
    fn channel_id(&self) -> u64 {
        self.keep.channel_id
    }

    fn __repr__(&self) -> String {
        format!(
            "<nodecell View {} bytes writable={}>",
            self.keep.view.len(),
            self.keep.view.writable()
        )
    }
}

/// C-contiguous strides (in elements) for `shape`.
pub fn contiguous(shape: &[u64]) -> Vec<i64> {
    let mut strides = vec![0i64; shape.len()];
    let mut acc: i64 = 1;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(shape[i].max(1) as i64);
    }
    strides
}

/// Where the memory at ``address`` (``nbytes`` long) lives: ``(Arena or View, byte
/// offset from its start)``, or None when it is private memory.
#[pyfunction]
pub fn locate(py: Python<'_>, address: usize, nbytes: usize) -> PyResult<Option<(Py<PyAny>, u64)>> {
    Ok(match dlpack::locate(address, nbytes) {
        None => None,
        Some(dlpack::Located::Arena(a, off)) => Some((
            Bound::new(py, PyArena { inner: a })?.into_any().unbind(),
            off,
        )),
        Some(dlpack::Located::View(v, off)) => {
            Some((Bound::new(py, PyView { keep: v })?.into_any().unbind(), off))
        }
    })
}

#[allow(clippy::type_complexity)]
fn checked(
    inner: &Arc<IpcArena>,
    offset: u64,
    dtype: &str,
    shape: Vec<u64>,
    strides: Option<Vec<i64>>,
) -> PyResult<(*mut u8, nodecell_ipc::DType, Vec<u64>, Vec<i64>)> {
    let dt = dlpack::dtype(dtype)?;
    let strides = strides.unwrap_or_else(|| contiguous(&shape));
    let d = TensorDesc::new(
        0,
        nodecell_ipc::Origin::Sender,
        offset,
        u64::MAX - offset,
        dt,
        &shape,
        &strides,
        false,
    )
    .and_then(|d| d.span())
    .map_err(|e| PyValueError::new_err(e.to_string()))?;
    if offset
        .checked_add(d)
        .is_none_or(|end| end > inner.len() as u64)
    {
        return Err(PyValueError::new_err("tensor reaches outside the arena"));
    }
    let base = inner.as_ptr();
    if base.is_null() {
        return Err(PyOSError::new_err("arena is not mapped"));
    }
    Ok((base.wrapping_add(offset as usize), dt, shape, strides))
}
