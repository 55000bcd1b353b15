//! Conversion between Python values and wire values, shared by every transport
//! that speaks nodecell frames: [`crate::channel::PyChannel`] (rings between a host
//! and its workers) and [`crate::wire::PyWire`] (bytes plus out-of-band buffers,
//! for transports such as Ray's object store).
//!
//! Values of the closed set (None, bool, int, float, str, bytes, list, tuple,
//! dict, set, frozenset) are converted here; anything else goes through the
//! `encode` hook, which must return a native value or a marker (`TensorRef`,
//! `HandleRef`, `Record`, `ErrorValue`). Decoded handles, records and errors go to
//! the matching `decode_*` hook; tensors to the transport's own
//! [`ValueCodec::tensor_to_py`]. A tensor travels as the record `nodecell.tensor
//! {kind, t}` so the receiver knows whether to build a numpy array or a torch tensor.

use std::sync::Mutex;

use nodecell_ipc::{
    Call, ErrorValue as IpcError, Frame, HandleKind, LogLevel, Record as IpcRecord, Release,
    RemoteHandle, Side, TensorDesc, Value, TENSOR_RECORD,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple,
};
use pyo3::IntoPyObjectExt;

use crate::markers::{ErrorValue, HandleRef, Record, TensorRef};
use crate::ProtocolViolation;

/// Deepest Python nesting the encoder follows (the wire allows 64).
const MAX_DEPTH: u32 = 60;

/// The Python callbacks a transport end encodes and decodes non-native values with.
pub(crate) struct Hooks {
    /// `encode(obj) -> marker or native value`.
    pub(crate) encode: Py<PyAny>,
    /// Builds a received tensor (the arguments depend on the transport).
    pub(crate) tensor: Py<PyAny>,
    /// `decode_handle(id, sender_owns, kind)`.
    pub(crate) handle: Py<PyAny>,
    /// `decode_record(name, fields)`.
    pub(crate) record: Py<PyAny>,
    /// `decode_error(type_name, message, traceback)`.
    pub(crate) error: Py<PyAny>,
}

fn level_to_py(l: LogLevel) -> u32 {
    match l {
        LogLevel::Debug => 10,
        LogLevel::Info => 20,
        LogLevel::Warning => 30,
        LogLevel::Error => 40,
        LogLevel::Critical => 50,
    }
}

fn level_from_py(n: i64) -> LogLevel {
    match n {
        i64::MIN..=10 => LogLevel::Debug,
        11..=20 => LogLevel::Info,
        21..=30 => LogLevel::Warning,
        31..=40 => LogLevel::Error,
        _ => LogLevel::Critical,
    }
}

/// One end of a transport that carries frames: what it must provide (its side,
/// its hooks, how tensors leave and arrive) and the conversions built on that.
pub(crate) trait ValueCodec {
    /// Which side this end is (decides who owns a handle).
    fn side(&self) -> Side;

    /// The hooks set by the Python layer.
    fn hooks(&self) -> &Mutex<Option<Hooks>>;

    /// A `TensorRef` the encode hook returned, as a wire value.
    fn tensor_value(&self, py: Python<'_>, t: &TensorRef) -> PyResult<Value>;

    /// A received tensor descriptor, as the Python object the tensor hook makes.
    fn tensor_to_py(&self, py: Python<'_>, d: &TensorDesc, kind: &str) -> PyResult<Py<PyAny>>;

    /// The wire value of a tensor this end recognises without the encode hook (a torch
    /// tensor already in shared memory: see [`crate::torchfast`]), or None.
    fn tensor_fast(&self, _py: Python<'_>, _obj: &Bound<'_, PyAny>) -> PyResult<Option<Value>> {
        Ok(None)
    }

    /// A received small tensor (a checked `nodecell.ndarray` record), as the Python
    /// object the tensor hook makes: by default the hook gets `(DLSource, kind,
    /// writable=True)`, as for a channel's tensors.
    fn inline_to_py(&self, py: Python<'_>, t: crate::tensor::InlineTensor) -> PyResult<Py<PyAny>> {
        let (src, kind) = t.into_source();
        let hook = self.hook(py, |h| &h.tensor)?;
        Ok(hook.call1((Bound::new(py, src)?, kind, true))?.unbind())
    }

    /// One of the hooks, or an error when they are not set.
    fn hook<'py>(
        &self,
        py: Python<'py>,
        which: fn(&Hooks) -> &Py<PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = self.hooks().lock().unwrap_or_else(|e| e.into_inner());
        match h.as_ref() {
            Some(h) => Ok(which(h).bind(py).clone()),
            None => Err(PyValueError::new_err("channel hooks are not set")),
        }
    }

    // ------------------------------------------------------------------ encoding

    /// A frame of `kind` from its Python payload (see the channel module's table).
    fn build_frame(
        &self,
        py: Python<'_>,
        kind: u8,
        call_id: u64,
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<Frame> {
        use nodecell_ipc::frame::kind as k;
        Ok(match kind {
            k::CALL | k::CALLBACK => {
                let t = payload.cast::<PyTuple>().map_err(|_| {
                    PyTypeError::new_err("call payload must be (target, method, args, kwargs)")
                })?;
                if t.len() != 4 && t.len() != 5 {
                    return Err(PyTypeError::new_err(
                        "call payload must be (target, method, args, kwargs[, parent])",
                    ));
                }
                let parent: Option<u64> = if t.len() == 5 {
                    t.get_item(4)?.extract()?
                } else {
                    None
                };
                let target: u64 = t.get_item(0)?.extract()?;
                let method: String = t.get_item(1)?.extract()?;
                let args_obj = t.get_item(2)?;
                let args_t = args_obj
                    .cast::<PyTuple>()
                    .map_err(|_| PyTypeError::new_err("call args must be a tuple"))?;
                let mut args = Vec::with_capacity(args_t.len());
                for a in args_t.iter() {
                    args.push(self.to_value(py, &a, 0)?);
                }
                let kw_obj = t.get_item(3)?;
                let kw = kw_obj
                    .cast::<PyDict>()
                    .map_err(|_| PyTypeError::new_err("call kwargs must be a dict"))?;
                let mut kwargs = Vec::with_capacity(kw.len());
                for (key, v) in kw.iter() {
                    let name: String = key
                        .extract()
                        .map_err(|_| PyTypeError::new_err("keyword argument names must be str"))?;
                    kwargs.push((name, self.to_value(py, &v, 0)?));
                }
                // Both directions send calls; `parent` names the peer's call this one is
                // nested in (the peer routes it to the thread waiting for that call).
                Frame::Call(Call {
                    id: call_id,
                    parent,
                    target,
                    method,
                    args,
                    kwargs,
                    deadline_ns: 0,
                })
            }
            k::REPLY => Frame::Reply {
                id: call_id,
                value: self.to_value(py, payload, 0)?,
            },
            k::ERROR => {
                let e = payload
                    .cast::<ErrorValue>()
                    .map_err(|_| PyTypeError::new_err("error payload must be an ErrorValue"))?
                    .get();
                Frame::Error {
                    id: call_id,
                    error: IpcError {
                        type_name: e.type_name.clone(),
                        message: e.message.clone(),
                        traceback: e.traceback.clone(),
                    },
                }
            }
            k::CANCEL => Frame::Cancel { id: call_id },
            k::RELEASE => {
                let ids: Vec<u64> = payload
                    .extract()
                    .map_err(|_| PyTypeError::new_err("release payload: list of ids"))?;
                Frame::Release(Release {
                    handles: ids,
                    tensors: Vec::new(),
                    retired: Vec::new(),
                })
            }
            k::LOG => {
                let (lvl, logger, message): (i64, String, String) = payload.extract()?;
                Frame::Log {
                    level: level_from_py(lvl),
                    logger,
                    message,
                }
            }
            k::HEARTBEAT => Frame::Heartbeat {
                seq: call_id,
                monotonic_ns: 0,
            },
            other => return Err(PyValueError::new_err(format!("unknown frame kind {other}"))),
        })
    }

    /// A Python value as a wire value.
    fn to_value(&self, py: Python<'_>, obj: &Bound<'_, PyAny>, depth: u32) -> PyResult<Value> {
        if depth > MAX_DEPTH {
            return Err(PyValueError::new_err(format!(
                "value nested deeper than {MAX_DEPTH} levels"
            )));
        }
        if obj.is_none() {
            return Ok(Value::None);
        }
        if obj.is_exact_instance_of::<PyBool>() {
            return Ok(Value::Bool(obj.extract::<bool>()?));
        }
        if obj.is_exact_instance_of::<PyInt>() {
            return Ok(match obj.extract::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::BigInt(obj.str()?.to_string()),
            });
        }
        if obj.is_exact_instance_of::<PyFloat>() {
            return Ok(Value::Float(obj.extract::<f64>()?));
        }
        if obj.is_exact_instance_of::<PyString>() {
            return Ok(Value::Str(obj.extract::<String>()?));
        }
        if obj.is_exact_instance_of::<PyBytes>() {
            return Ok(Value::Bytes(obj.cast::<PyBytes>()?.as_bytes().to_vec()));
        }
        if let Ok(l) = obj.cast_exact::<PyList>() {
            let mut v = Vec::with_capacity(l.len());
            for x in l.iter() {
                v.push(self.to_value(py, &x, depth + 1)?);
            }
            return Ok(Value::List(v));
        }
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            let mut v = Vec::with_capacity(t.len());
            for x in t.iter() {
                v.push(self.to_value(py, &x, depth + 1)?);
            }
            return Ok(Value::Tuple(v));
        }
        if let Ok(d) = obj.cast_exact::<PyDict>() {
            let mut v = Vec::with_capacity(d.len());
            for (key, val) in d.iter() {
                v.push((
                    self.to_value(py, &key, depth + 1)?,
                    self.to_value(py, &val, depth + 1)?,
                ));
            }
            return Ok(Value::Dict(v));
        }
        if let Ok(s) = obj.cast_exact::<PySet>() {
            let mut v = Vec::with_capacity(s.len());
            for x in s.iter() {
                v.push(self.to_value(py, &x, depth + 1)?);
            }
            return Ok(Value::Set(v));
        }
        if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            let mut v = Vec::with_capacity(s.len());
            for x in s.iter() {
                v.push(self.to_value(py, &x, depth + 1)?);
            }
            return Ok(Value::Set(v));
        }
        // A torch tensor already in shared memory (the common large value) is answered
        // before the marker checks below, which it can never match.
        if let Some(v) = self.tensor_fast(py, obj)? {
            return Ok(v);
        }
        if let Ok(t) = obj.cast::<TensorRef>() {
            return self.tensor_value(py, t.get());
        }
        if let Ok(h) = obj.cast::<HandleRef>() {
            let h = h.get();
            let me = self.side();
            let owner = if h.sender_owns { me } else { me.peer() };
            let kind = HandleKind::from_name(&h.kind).ok_or_else(|| {
                PyValueError::new_err(format!("unknown handle kind {:?}", h.kind))
            })?;
            return Ok(Value::Handle(RemoteHandle {
                id: h.id,
                owner,
                kind,
            }));
        }
        if let Ok(r) = obj.cast::<Record>() {
            let r = r.get();
            let fields = r.fields.bind(py);
            let mut out = Vec::with_capacity(fields.len());
            for (key, val) in fields.iter() {
                let name: String = key
                    .extract()
                    .map_err(|_| PyTypeError::new_err("record field names must be str"))?;
                out.push((name, self.to_value(py, &val, depth + 1)?));
            }
            return Ok(Value::Record(Box::new(IpcRecord {
                name: r.name.clone(),
                fields: out,
            })));
        }
        if let Ok(e) = obj.cast::<ErrorValue>() {
            let e = e.get();
            return Ok(Value::Error(Box::new(IpcError {
                type_name: e.type_name.clone(),
                message: e.message.clone(),
                traceback: e.traceback.clone(),
            })));
        }
        // Anything else: the Python layer decides (tensor, record, handle, or a native value).
        let hook = self.hook(py, |h| &h.encode)?;
        let r = hook.call1((obj,))?;
        if r.is(obj) {
            return Err(PyTypeError::new_err(format!(
                "cannot send a value of type {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            )));
        }
        self.to_value(py, &r, depth + 1)
    }

    // ------------------------------------------------------------------ decoding

    /// A received frame as `(kind, call_id, payload)`.
    fn frame_to_py(&self, py: Python<'_>, f: Frame) -> PyResult<Py<PyAny>> {
        use nodecell_ipc::frame::kind as k;
        let (kind, id, payload): (u8, u64, Py<PyAny>) = match f {
            Frame::Call(c) => {
                let kind = if c.parent.is_some() {
                    k::CALLBACK
                } else {
                    k::CALL
                };
                let id = c.id;
                let (target, parent) = (c.target, c.parent);
                let method = c.method.clone();
                // A value this side cannot build (e.g. an array without numpy here) fails
                // this call only: `args` is then the exception, to be answered as an
                // error, and `kwargs` None.
                let payload = match self.call_payload(py, c) {
                    Ok(p) => p,
                    Err(e) => (
                        target,
                        method,
                        e.into_value(py).into_any(),
                        py.None(),
                        parent,
                    )
                        .into_py_any(py)?,
                };
                (kind, id, payload)
            }
            Frame::Reply { id, value } => match self.to_py(py, value) {
                Ok(v) => (k::REPLY, id, v),
                Err(e) => (k::ERROR, id, e.into_value(py).into_any()),
            },
            Frame::Error { id, error } => {
                let hook = self.hook(py, |h| &h.error)?;
                (
                    k::ERROR,
                    id,
                    hook.call1((error.type_name, error.message, error.traceback))?
                        .unbind(),
                )
            }
            Frame::Cancel { id } => (k::CANCEL, id, py.None()),
            Frame::Release(r) => (
                k::RELEASE,
                0,
                PyList::new(py, r.handles)?.into_any().unbind(),
            ),
            Frame::Log {
                level,
                logger,
                message,
            } => (
                k::LOG,
                0,
                (level_to_py(level), logger, message).into_py_any(py)?,
            ),
            Frame::Heartbeat { seq, .. } => (k::HEARTBEAT, seq, py.None()),
        };
        (kind, id, payload).into_py_any(py)
    }

    fn call_payload(&self, py: Python<'_>, c: Call) -> PyResult<Py<PyAny>> {
        let mut args = Vec::with_capacity(c.args.len());
        for a in c.args {
            args.push(self.to_py(py, a)?);
        }
        let kw = PyDict::new(py);
        for (name, v) in c.kwargs {
            kw.set_item(name, self.to_py(py, v)?)?;
        }
        (c.target, c.method, PyTuple::new(py, args)?, kw, c.parent).into_py_any(py)
    }

    fn to_py(&self, py: Python<'_>, v: Value) -> PyResult<Py<PyAny>> {
        Ok(match v {
            Value::None => py.None(),
            Value::Bool(b) => b.into_py_any(py)?,
            Value::Int(i) => i.into_py_any(py)?,
            Value::BigInt(s) => py.get_type::<PyInt>().call1((s,))?.unbind(),
            Value::Float(x) => x.into_py_any(py)?,
            Value::Str(s) => s.into_py_any(py)?,
            Value::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
            Value::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for x in items {
                    out.push(self.to_py(py, x)?);
                }
                PyList::new(py, out)?.into_any().unbind()
            }
            Value::Tuple(items) => {
                let mut out = Vec::with_capacity(items.len());
                for x in items {
                    out.push(self.to_py(py, x)?);
                }
                PyTuple::new(py, out)?.into_any().unbind()
            }
            Value::Dict(items) => {
                let d = PyDict::new(py);
                for (key, val) in items {
                    let key = self.to_py(py, key)?;
                    d.set_item(key, self.to_py(py, val)?).map_err(|e| {
                        PyTypeError::new_err(format!("dict key from peer is unusable: {e}"))
                    })?;
                }
                d.into_any().unbind()
            }
            Value::Set(items) => {
                let s = PySet::empty(py)?;
                for x in items {
                    s.add(self.to_py(py, x)?).map_err(|e| {
                        PyTypeError::new_err(format!("set item from peer is unusable: {e}"))
                    })?;
                }
                s.into_any().unbind()
            }
            Value::Tensor(d) => self.tensor_to_py(py, &d, "numpy")?,
            Value::KindTensor(kind, d) => self.tensor_to_py(py, &d, kind.name())?,
            Value::Handle(h) => {
                let hook = self.hook(py, |h| &h.handle)?;
                let sender_owns = h.owner != self.side();
                hook.call1((h.id, sender_owns, h.kind.name()))?.unbind()
            }
            Value::Record(r) => {
                let IpcRecord { name, fields } = *r;
                if name == TENSOR_RECORD {
                    return self.tensor_record_to_py(py, fields);
                }
                if name == crate::tensor::INLINE_RECORD {
                    let t = crate::tensor::inline_tensor_of(fields)?;
                    return self.inline_to_py(py, t);
                }
                let d = PyDict::new(py);
                for (k, v) in fields {
                    d.set_item(k, self.to_py(py, v)?)?;
                }
                let hook = self.hook(py, |h| &h.record)?;
                hook.call1((name, d))?.unbind()
            }
            Value::Error(e) => {
                let hook = self.hook(py, |h| &h.error)?;
                hook.call1((e.type_name, e.message, e.traceback))?.unbind()
            }
        })
    }

    fn tensor_record_to_py(
        &self,
        py: Python<'_>,
        fields: Vec<(String, Value)>,
    ) -> PyResult<Py<PyAny>> {
        let mut kind = None;
        let mut desc = None;
        for (k, v) in fields {
            match (k.as_str(), v) {
                ("kind", Value::Str(s)) if s == "numpy" || s == "torch" => kind = Some(s),
                ("t", Value::Tensor(d)) => desc = Some(d),
                _ => {
                    return Err(ProtocolViolation::new_err(
                        "malformed nodecell.tensor record",
                    ))
                }
            }
        }
        match (kind, desc) {
            (Some(kind), Some(d)) => self.tensor_to_py(py, &d, &kind),
            _ => Err(ProtocolViolation::new_err(
                "malformed nodecell.tensor record",
            )),
        }
    }
}
