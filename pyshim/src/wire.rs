//! `Wire`: nodecell frames as bytes plus out-of-band buffers, for transports that
//! move bytes between machines (the Ray backend: actor calls and Ray's object store).
//!
//! The frame bytes are the same encoding the channel's rings carry
//! ([`nodecell_ipc::Frame`]), with the same closed value set and the same limits;
//! values are converted by [`crate::values`]. Tensors do not travel in the bytes:
//! the encode hook returns a `TensorRef` whose `arena` is any object exporting a
//! byte buffer (a `uint8` numpy array over the tensor's storage, `bytes`, ...);
//! `encode` lists those objects and names each by its index in the descriptor's
//! slot, so the transport can carry them out of band (Ray puts numpy arrays in its
//! object store and maps them on the receiving node without copying). `decode`
//! takes the received buffers back, checks every descriptor against the buffer it
//! names (index, offset, span) before the tensor hook sees it, and hands the hook
//! `(buffer, offset, dtype, shape, strides_in_elements, kind)`.

use std::sync::Mutex;

use nodecell_ipc::{Device, Frame, Limits, Origin, Side, TensorDesc, Value};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::markers::TensorRef;
use crate::values::{Hooks, ValueCodec};
use crate::ProtocolViolation;

/// One end of a byte transport speaking nodecell frames.
#[pyclass(name = "Wire", module = "nodecell._nodecell", frozen)]
pub struct PyWire {
    side: Side,
    limits: Limits,
    hooks: Mutex<Option<Hooks>>,
    /// Buffers listed by the encode in progress (tensors leave out of band).
    out: Mutex<Vec<Py<PyAny>>>,
    /// `(buffer, its length)` of the decode in progress.
    inb: Mutex<Vec<(Py<PyAny>, u64)>>,
}

/// Byte length of a buffer-exporting object (`memoryview(obj).nbytes`).
fn buffer_len(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    let mv = py
        .import("builtins")?
        .getattr("memoryview")?
        .call1((obj,))
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "a tensor buffer must export the buffer protocol, got {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
    let n: u64 = mv.getattr("nbytes")?.extract()?;
    mv.call_method0("release")?;
    Ok(n)
}

#[pymethods]
impl PyWire {
    /// A new end: `side` is `"host"` (the driver) or `"worker"` (the far end, which
    /// owns the objects it names as its handles); `max_frame` bounds the bytes.
    #[new]
    #[pyo3(signature = (side, max_frame = 256 << 20))]
    fn new(side: &str, max_frame: usize) -> PyResult<Self> {
        let side = match side {
            "host" => Side::Host,
            "worker" => Side::Worker,
            other => {
                return Err(PyValueError::new_err(format!(
                    "side: expected 'host' or 'worker', got {other:?}"
                )))
            }
        };
        Ok(PyWire {
            side,
            limits: Limits {
                max_frame,
                ..Limits::default()
            },
            hooks: Mutex::new(None),
            out: Mutex::new(Vec::new()),
            inb: Mutex::new(Vec::new()),
        })
    }

    /// Sets the Python callbacks used to encode and decode non-native values
    /// (`decode_tensor(buffer, offset, dtype, shape, strides, kind)`).
    fn set_hooks(
        &self,
        encode: Py<PyAny>,
        decode_tensor: Py<PyAny>,
        decode_handle: Py<PyAny>,
        decode_record: Py<PyAny>,
        decode_error: Py<PyAny>,
    ) {
        *self.hooks.lock().unwrap_or_else(|e| e.into_inner()) = Some(Hooks {
            encode,
            tensor: decode_tensor,
            handle: decode_handle,
            record: decode_record,
            error: decode_error,
        });
    }

    /// Drops the hooks (they usually hold the endpoint that holds this wire).
    fn close(&self) {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// `host` or `worker`.
    #[getter]
    fn side(&self) -> &'static str {
        match self.side {
            Side::Host => "host",
            Side::Worker => "worker",
        }
    }

    /// One frame as `(bytes, buffers)`: the encoded frame and the tensor buffers
    /// it names by index, in order.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        kind: u8,
        call_id: u64,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        // A hook may encode on this wire again: keep an outer encode's buffers aside.
        let outer = std::mem::take(&mut *self.out.lock().unwrap_or_else(|e| e.into_inner()));
        let frame = self.build_frame(py, kind, call_id, payload);
        let bufs = std::mem::replace(
            &mut *self.out.lock().unwrap_or_else(|e| e.into_inner()),
            outer,
        );
        let frame = frame?;
        let mut bytes = Vec::new();
        frame
            .encode(&mut bytes, &self.limits)
            .map_err(|e| PyValueError::new_err(format!("cannot encode frame: {e}")))?;
        let list = PyList::new(py, bufs)?;
        PyTuple::new(py, [PyBytes::new(py, &bytes).into_any(), list.into_any()])
    }

    /// Decodes `(kind, call_id, payload)` from a frame's bytes and the buffers that
    /// came with it. Malformed bytes or a descriptor outside its buffer raise
    /// `ProtocolViolation`.
    fn decode(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyBytes>,
        buffers: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let mut inb = Vec::new();
        for b in buffers.try_iter()? {
            let b = b?;
            let n = buffer_len(py, &b)?;
            inb.push((b.unbind(), n));
        }
        let decoded = Frame::decode(data.as_bytes(), &self.limits)
            .map_err(|e| ProtocolViolation::new_err(format!("malformed frame: {e}")))?;
        let outer = std::mem::replace(
            &mut *self.inb.lock().unwrap_or_else(|e| e.into_inner()),
            inb,
        );
        let r = self.frame_to_py(py, decoded.frame);
        *self.inb.lock().unwrap_or_else(|e| e.into_inner()) = outer;
        r
    }

    fn __repr__(&self) -> String {
        format!("<nodecell Wire {}>", self.side())
    }
}

impl ValueCodec for PyWire {
    fn side(&self) -> Side {
        self.side
    }

    fn hooks(&self) -> &Mutex<Option<Hooks>> {
        &self.hooks
    }

    fn tensor_value(&self, py: Python<'_>, t: &TensorRef) -> PyResult<Value> {
        let (dtype, strides) = crate::tensor::element_strides(t)?;
        let buf = t.arena.bind(py);
        let len = buffer_len(py, buf)?;
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let slot = out.len() as u64;
        let probe = TensorDesc::new(
            slot,
            Origin::Sender,
            t.offset,
            u64::MAX - t.offset,
            dtype,
            &t.shape,
            &strides,
            false,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let span = probe
            .span()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let desc = TensorDesc::new(
            slot,
            Origin::Sender,
            t.offset,
            span,
            dtype,
            &t.shape,
            &strides,
            false,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        desc.validate_in(len)
            .map_err(|e| PyValueError::new_err(format!("tensor buffer: {e}")))?;
        out.push(buf.clone().unbind());
        Ok(crate::torchfast::tensor_record(&t.kind, desc))
    }

    fn tensor_to_py(&self, py: Python<'_>, d: &TensorDesc, kind: &str) -> PyResult<Py<PyAny>> {
        if d.device != Device::Cpu || d.origin != Origin::Sender || d.writable {
            return Err(ProtocolViolation::new_err(
                "a tensor on a wire must be a read-only host-memory buffer the sender names",
            ));
        }
        let (buf, len) = {
            let inb = self.inb.lock().unwrap_or_else(|e| e.into_inner());
            let (b, n) = usize::try_from(d.slot)
                .ok()
                .and_then(|i| inb.get(i))
                .ok_or_else(|| {
                    ProtocolViolation::new_err(format!(
                        "tensor names buffer {} but {} came with the frame",
                        d.slot,
                        inb.len()
                    ))
                })?;
            (b.clone_ref(py), *n)
        };
        d.validate_in(len)
            .map_err(|e| ProtocolViolation::new_err(format!("tensor buffer: {e}")))?;
        let hook = self.hook(py, |h| &h.tensor)?;
        let shape = d.shape().to_vec();
        let strides = d.strides().to_vec();
        hook.call1((buf, d.offset, d.dtype.name(), shape, strides, kind))?
            .into_py_any(py)
    }

    /// A small tensor that came inline: the hook gets its bytes as a `bytearray` (this
    /// process's own copy), like an out-of-band buffer.
    fn inline_to_py(&self, py: Python<'_>, t: crate::tensor::InlineTensor) -> PyResult<Py<PyAny>> {
        let hook = self.hook(py, |h| &h.tensor)?;
        let strides: Vec<i64> = crate::arena::contiguous(&t.shape);
        let buf = PyByteArray::new(py, &t.data);
        hook.call1((buf, 0u64, t.dtype.name(), t.shape, strides, t.kind))?
            .into_py_any(py)
    }
}
