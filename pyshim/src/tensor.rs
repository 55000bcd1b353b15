//! Tensors on the channel: how a `TensorRef` the Python layer hands over becomes a
//! descriptor, how a received descriptor becomes memory for numpy or torch, the
//! inline `nodecell.ndarray` record for small tensors, the pooled arenas the
//! tensors a process sends are copied into, and the dtype table Python reads.
//!
//! * Sending ([`tensor_value`]): one of our arenas is shared as it is; a received
//!   view goes back to the peer it came from as an echo of the peer's descriptor,
//!   unless this process wrote into it (a copy-on-write copy: the peer's arena no
//!   longer holds what we see), in which case its bytes are copied into a pooled
//!   arena first.
//! * Receiving ([`tensor_to_py`]): the host's own read-only arena echoed back is
//!   handed out as the same memory; everything else is mapped copy-on-write (a
//!   worker's pooled arena coming back to it too: its input must not alias the
//!   output the host still holds), output buffers writable-shared.
//! * Small tensors (under [`INLINE_LIMIT`] bytes) travel as the record
//!   `nodecell.ndarray {kind, dtype, shape, data}`, built and parsed here.
//! * torch tensors already in an arena, and received torch tensors, skip the Python
//!   hooks (see [`crate::torchfast`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nodecell_ipc::{
    Arena as IpcArena, ArenaPool, ArenaState, Channel, DType, Origin, Side, TensorDesc, Value,
};
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::arena::{PyArena, PyView, ViewKeep};
use crate::channel::{channel_err, PyChannel};
use crate::dlpack::{DLSource, Keep, Located};
use crate::markers::{Record, TensorRef};
use crate::ProtocolViolation;

/// The record name of a small tensor carried inline (its bytes in the frame).
pub(crate) const INLINE_RECORD: &str = "nodecell.ndarray";

/// Tensors smaller than this many bytes travel inline (copied into the frame) instead of
/// in an arena (`_nodecell.INLINE_LIMIT` to the Python layer).
pub const INLINE_LIMIT: u64 = 64 * 1024;

/// Our arenas shared on one channel, by slot (to hand the same memory back).
pub(crate) type OwnArenas = Mutex<HashMap<u64, Weak<IpcArena>>>;

/// Our arenas named by the frame being built, held until it is sent (the channel
/// then counts the peer's references to them). Without this a pooled arena is free
/// again as soon as its tensor's marker is encoded, and the pool hands it out for the
/// next tensor of the same frame: two outputs of one result in one arena, the second
/// written over the first (a node returning a mask and its inverse got two inverses).
pub(crate) type InFlight = Mutex<Vec<Arc<IpcArena>>>;

/// One channel end, as the tensor code needs it.
pub(crate) struct End<'a> {
    /// The channel.
    pub(crate) ch: &'a Channel,
    /// The Python-level channel id (views remember it).
    pub(crate) id: u64,
    /// Our arenas shared on it.
    pub(crate) own: &'a OwnArenas,
    /// Our arenas the frame being built names (see [`InFlight`]).
    pub(crate) in_flight: &'a InFlight,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The descriptor for `shape`/`strides` (elements) at `offset` in `slot`, covering
/// exactly the bytes the elements span, and that span.
fn desc_at(
    slot: u64,
    origin: Origin,
    offset: u64,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<(TensorDesc, u64)> {
    let span = TensorDesc::new(
        slot,
        origin,
        offset,
        u64::MAX - offset,
        dtype,
        shape,
        strides,
        false,
    )
    .and_then(|d| d.span())
    .map_err(value_err)?;
    let d = TensorDesc::new(slot, origin, offset, span, dtype, shape, strides, false)
        .map_err(value_err)?;
    Ok((d, span))
}

/// A `TensorRef`'s dtype and its byte strides in elements (a stride that is negative or
/// not a multiple of the item size is refused: the array must be made contiguous).
pub(crate) fn element_strides(t: &TensorRef) -> PyResult<(DType, Vec<i64>)> {
    let dtype = DType::from_name(&t.dtype)
        .ok_or_else(|| PyTypeError::new_err(format!("unknown dtype {:?}", t.dtype)))?;
    let item = dtype.itemsize() as i64;
    let mut strides = Vec::with_capacity(t.strides.len());
    for &s in &t.strides {
        if s < 0 || s % item != 0 {
            return Err(PyValueError::new_err(format!(
                "stride {s} bytes is negative or not a multiple of the {} item size; make the array contiguous",
                t.dtype
            )));
        }
        strides.push(s / item);
    }
    Ok((dtype, strides))
}

/// A `TensorRef` the encode hook returned, as the `nodecell.tensor` record.
pub(crate) fn tensor_value(end: &End<'_>, py: Python<'_>, t: &TensorRef) -> PyResult<Value> {
    let (dtype, strides) = element_strides(t)?;
    let arena = t.arena.bind(py);
    let desc =
        if let Some(d) = crate::cuda::tensor_desc(py, end.ch, end.id, arena, t, dtype, &strides)? {
            d
        } else if let Ok(a) = arena.cast::<PyArena>() {
            share_local(end, py, &a.get().inner, t.offset, dtype, &t.shape, &strides)?
        } else if let Ok(v) = arena.cast::<PyView>() {
            view_desc(end, py, &v.get().keep, t.offset, dtype, &t.shape, &strides)?
        } else {
            return Err(PyTypeError::new_err(
                "TensorRef.arena must be an Arena, a View, a CudaBuffer or a CudaView",
            ));
        };
    Ok(crate::torchfast::tensor_record(&t.kind, desc))
}

/// The descriptor of a tensor found in one of our arenas or in a received view (see
/// [`crate::dlpack::locate`]; `strides` in elements).
pub(crate) fn located_desc(
    end: &End<'_>,
    py: Python<'_>,
    loc: Located,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<TensorDesc> {
    match loc {
        Located::Arena(a, off) => share_local(end, py, &a, off, dtype, shape, strides),
        Located::View(v, off) => view_desc(end, py, &v, off, dtype, shape, strides),
    }
}

/// Shares a tensor this process sees through one of our arenas' own mapping. An arena
/// lent to the worker heap ([`crate::heap`]) is remapped copy-on-write here once its
/// bytes are sent (the worker's later writes stay private); one the worker wrote into
/// after such a send holds its bytes in private pages, so those are copied instead.
fn share_local(
    end: &End<'_>,
    py: Python<'_>,
    arena: &Arc<IpcArena>,
    offset: u64,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<TensorDesc> {
    if !arena.is_lent() {
        return share_own(end, arena, offset, dtype, shape, strides);
    }
    let (_, span) = desc_at(0, Origin::Sender, offset, dtype, shape, strides)?;
    if offset
        .checked_add(span)
        .is_none_or(|e| e > arena.len() as u64)
    {
        return Err(PyValueError::new_err(
            "tensor reaches outside the arena it lives in",
        ));
    }
    // Written after an earlier send (its bytes are in private pages), or the remap
    // failed (the worker's later writes would reach the peer): send a copy instead.
    let privatized = match arena.privatize() {
        // Just remapped: nothing written since.
        Ok(true) => true,
        Ok(false) if !arena.written_privately(offset as usize, span as usize) => false,
        _ => {
            crate::heap::note_copied();
            let src = arena.as_ptr().wrapping_add(offset as usize);
            // The arena (held by `arena`) keeps `src` mapped during the copy.
            return copy_bytes(end, py, src, span, dtype, shape, strides);
        }
    };
    let d = share_own(end, arena, offset, dtype, shape, strides)?;
    crate::heap::note_sent(span, privatized);
    Ok(d)
}

/// Shares one of our arenas and remembers it by slot.
fn share_own(
    end: &End<'_>,
    arena: &Arc<IpcArena>,
    offset: u64,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<TensorDesc> {
    let d = end
        .ch
        .share_tensor(arena, offset, dtype, shape, Some(strides))
        .map_err(channel_err)?;
    {
        let mut own = lock(end.own);
        // Usually there already (sent before): no rehash and no new weak reference.
        if own
            .get(&d.slot)
            .is_none_or(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(arena)))
        {
            own.insert(d.slot, Arc::downgrade(arena));
        }
    }
    lock(end.in_flight).push(arena.clone());
    Ok(d)
}

/// A tensor inside a received view (`offset` bytes from the view's first byte).
fn view_desc(
    end: &End<'_>,
    py: Python<'_>,
    v: &Arc<ViewKeep>,
    offset: u64,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<TensorDesc> {
    if v.channel_id != end.id {
        return Err(PyValueError::new_err(
            "this tensor's storage belongs to another channel; copy it into an arena first",
        ));
    }
    let (_, span) = desc_at(0, Origin::Sender, offset, dtype, shape, strides)?;
    if offset
        .checked_add(span)
        .is_none_or(|e| e > v.view.len() as u64)
    {
        return Err(PyValueError::new_err(
            "tensor reaches outside the storage it was received in",
        ));
    }
    if v.view.written_locally(offset, span) {
        // Our copy-on-write pages differ from the owner's arena: send what we see.
        return copy_out(end, py, v, offset, span, dtype, shape, strides);
    }
    if let Some(base) = &v.echo {
        // The peer's own memory, named back to it (its span is the one checked above).
        let at = base
            .offset
            .checked_add(offset)
            .ok_or_else(|| PyValueError::new_err("tensor offset overflows"))?;
        return TensorDesc::new(
            base.slot,
            Origin::Receiver,
            at,
            span,
            dtype,
            shape,
            strides,
            false,
        )
        .map_err(value_err);
    }
    if let Some((arena, base)) = &v.own {
        // Our own (pooled) arena that came back to us: share it again.
        let at = base
            .checked_add(offset)
            .ok_or_else(|| PyValueError::new_err("tensor offset overflows"))?;
        return share_own(end, arena, at, dtype, shape, strides);
    }
    copy_out(end, py, v, offset, span, dtype, shape, strides)
}

/// Copies `span` bytes of a view into a pooled arena and shares that.
#[allow(clippy::too_many_arguments)]
fn copy_out(
    end: &End<'_>,
    py: Python<'_>,
    v: &Arc<ViewKeep>,
    offset: u64,
    span: u64,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<TensorDesc> {
    // The caller checked `offset + span <= view.len()`; `v` keeps the mapping.
    let src = v.view.as_ptr().wrapping_add(offset as usize);
    copy_bytes(end, py, src, span, dtype, shape, strides)
}

/// Tensors this process copied into a pooled arena to send them, and their bytes (for
/// `tensor_pool_stats`: `copies`, `copied_bytes`).
static COPIES: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

fn count_copy(bytes: usize) {
    COPIES.0.fetch_add(1, Ordering::Relaxed);
    COPIES.1.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Copies the `span` bytes at `src` (inside a mapping the caller keeps alive) into a
/// pooled arena and shares that.
fn copy_bytes(
    end: &End<'_>,
    py: Python<'_>,
    src: *const u8,
    span: u64,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<TensorDesc> {
    let src = src as usize;
    let arena = py.detach(|| -> PyResult<Arc<IpcArena>> {
        let a = pooled(end.ch, span.max(1) as usize)?;
        let mut buf_ok = true;
        if span > 0 {
            // SAFETY: the caller's `span` readable bytes at `src`, in a mapping it keeps alive;
            // the destination, another mapping, is a fresh or free arena only we write.
            let src = unsafe { std::slice::from_raw_parts(src as *const u8, span as usize) };
            buf_ok = a.write(0, src).is_ok();
            count_copy(src.len());
        }
        if !buf_ok {
            return Err(PyOSError::new_err("cannot write a pooled arena"));
        }
        seal_frozen_if_needed(end.ch, &a)?;
        Ok(a)
    })?;
    crate::dlpack::register_arena(&arena);
    share_own(end, &arena, 0, dtype, shape, strides)
}

/// An arena of at least `len` bytes for a tensor to be sent on `ch`: from the pool,
/// or (a worker on a channel that wants immutable outputs) a fresh one to be frozen
/// after it is filled.
fn pooled(ch: &Channel, len: usize) -> PyResult<Arc<IpcArena>> {
    let r = if ch.side() == Side::Worker && ch.config().frozen_outputs {
        IpcArena::create_with(len, false)
    } else {
        ArenaPool::global().take(ch, len)
    };
    r.map_err(|e| PyOSError::new_err(format!("tensor arena of {len} bytes: {e}")))
}

/// Freezes a fresh arena made by [`pooled`] for a frozen-outputs channel.
fn seal_frozen_if_needed(ch: &Channel, a: &Arc<IpcArena>) -> PyResult<()> {
    if a.state() == ArenaState::Open {
        a.freeze()
            .map_err(|e| PyOSError::new_err(format!("freeze arena: {e}")))?;
        let _ = ch;
    }
    Ok(())
}

/// A received descriptor, as what the `decode_tensor(src, kind, writable)` hook makes
/// (`hook` fetches that hook: only asked for when the tensor is not built here).
pub(crate) fn tensor_to_py<'py>(
    end: &End<'_>,
    py: Python<'py>,
    hook: &dyn Fn() -> PyResult<Bound<'py, PyAny>>,
    d: &TensorDesc,
    kind: &str,
) -> PyResult<Py<PyAny>> {
    let mut own = None;
    if d.origin == Origin::Receiver {
        let a = lock(end.own)
            .get(&d.slot)
            .cloned()
            .and_then(|w| w.upgrade());
        match a {
            // The host's own arena coming back: the same memory, so data pointers match.
            Some(a) if matches!(a.state(), ArenaState::ReadOnly | ArenaState::Output) => {
                let data = a.as_ptr().wrapping_add(d.offset as usize);
                return build(py, hook, Keep::Arena(a), data, d, kind, true);
            }
            // A worker's pooled (or frozen) arena coming back: mapped copy-on-write,
            // remembered so it can be sent on again without a copy.
            Some(a) => own = Some((a, d.offset)),
            None => {}
        }
    }
    // The peer's arena: a fresh mapping. Output buffers are mapped writable-shared;
    // everything else copy-on-write, so no tensor made here can fault on a write or
    // reach the sender's memory.
    let view = if d.writable && d.origin == Origin::Sender {
        end.ch.import(d)
    } else {
        end.ch.import_cow(d)
    }
    .map_err(channel_err)?;
    let shared_writable = d.writable && view.writable();
    let sender = d.origin == Origin::Sender;
    let keep = Arc::new(ViewKeep {
        view,
        release: sender.then(|| (end.ch.downgrade(), d.clone())),
        channel_id: end.id,
        echo: sender.then(|| d.clone()),
        own,
    });
    crate::dlpack::register_view(&keep);
    let data = keep
        .view
        .as_mut_ptr()
        .unwrap_or(keep.view.as_ptr() as *mut u8);
    build(py, hook, Keep::View(keep), data, d, kind, shared_writable)
}

/// The tensor or array over `d`'s elements at `data` (inside `keep`'s storage): a torch
/// tensor built here when one is wanted and torch is imported (see
/// [`crate::torchfast::decode`]), else what the `decode_tensor(src, kind, writable)`
/// hook makes of a [`DLSource`] (read-only unless `writable`).
fn build<'py>(
    py: Python<'py>,
    hook: &dyn Fn() -> PyResult<Bound<'py, PyAny>>,
    keep: Keep,
    data: *mut u8,
    d: &TensorDesc,
    kind: &str,
    writable: bool,
) -> PyResult<Py<PyAny>> {
    if kind == "torch" {
        if let Some(t) = crate::torchfast::decode(py, &keep, data, d.dtype, d.shape(), d.strides())
        {
            return Ok(t);
        }
    }
    let src = DLSource::new(
        keep,
        data,
        d.dtype,
        d.shape().to_vec(),
        d.strides().to_vec(),
        !writable,
    );
    Ok(hook()?
        .call1((Bound::new(py, src)?, kind, writable))?
        .unbind())
}

// ---- pooled arenas for Python --------------------------------------------------------

/// An arena for a tensor of `nbytes` about to be sent on `channel`, from this process's
/// pool (a free one of the same size class bound to that channel, else a new,
/// pre-faulted one). With `src_address`, the `nbytes` bytes there are copied in first
/// (the GIL released; the caller keeps that memory alive and unchanged meanwhile).
/// A worker on a channel that wants immutable outputs gets a frozen copy instead.
#[pyfunction]
#[pyo3(signature = (channel, nbytes, src_address = 0))]
pub fn pool_arena(
    py: Python<'_>,
    channel: &PyChannel,
    nbytes: usize,
    src_address: usize,
) -> PyResult<PyArena> {
    if nbytes == 0 {
        return Err(PyValueError::new_err("an arena cannot be empty"));
    }
    let ch = &channel.ch()?;
    let frozen = ch.side() == Side::Worker && ch.config().frozen_outputs;
    if frozen && src_address == 0 {
        return Err(PyValueError::new_err(
            "this channel takes immutable outputs: pass the bytes to copy (src_address)",
        ));
    }
    let src: Option<&[u8]> = (src_address != 0).then(|| {
        // SAFETY: the caller passes the data pointer and size of a live contiguous array/storage
        // it keeps referenced during this call: `nbytes` readable bytes.
        unsafe { std::slice::from_raw_parts(src_address as *const u8, nbytes) }
    });
    let inner = py.detach(|| -> PyResult<Arc<IpcArena>> {
        let a = pooled(ch, nbytes)?;
        if let Some(src) = src {
            a.write(0, src)
                .map_err(|e| PyOSError::new_err(format!("fill arena: {e}")))?;
            count_copy(src.len());
        }
        seal_frozen_if_needed(ch, &a)?;
        Ok(a)
    })?;
    crate::dlpack::register_arena(&inner);
    Ok(PyArena { inner })
}

/// Sets the most bytes of free pooled arenas this process keeps (0: none).
#[pyfunction]
pub fn set_tensor_pool(limit: usize) {
    ArenaPool::global().set_limit(limit);
}

/// `{hits, misses, dropped, arenas, bytes, free_bytes, limit}` of this process's pool,
/// and `copies` / `copied_bytes`: tensors copied into pooled arenas to be sent.
#[pyfunction]
pub fn tensor_pool_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let pool = ArenaPool::global();
    let s = pool.stats();
    let d = PyDict::new(py);
    d.set_item("hits", s.hits)?;
    d.set_item("misses", s.misses)?;
    d.set_item("dropped", s.dropped)?;
    d.set_item("arenas", s.arenas)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("free_bytes", s.free_bytes)?;
    d.set_item("limit", pool.limit())?;
    d.set_item("copies", COPIES.0.load(Ordering::Relaxed))?;
    d.set_item("copied_bytes", COPIES.1.load(Ordering::Relaxed))?;
    Ok(d)
}

// ---- the inline record -----------------------------------------------------------------

/// The `nodecell.ndarray` record for a small C-contiguous tensor: `kind` (`numpy` or
/// `torch`), wire `dtype` name, `shape`, and a copy of the `nbytes` bytes at
/// `address` (the caller keeps them alive during the call; 0 with `nbytes` 0).
#[pyfunction]
pub fn inline_tensor(
    py: Python<'_>,
    kind: &str,
    dtype: &str,
    shape: Vec<u64>,
    address: usize,
    nbytes: usize,
) -> PyResult<Record> {
    check_kind(kind)?;
    let dt = crate::dlpack::dtype(dtype)?;
    let want = numel(&shape)
        .and_then(|n| n.checked_mul(dt.itemsize()))
        .ok_or_else(|| PyValueError::new_err(format!("shape {shape:?} overflows")))?;
    if want != nbytes as u64 {
        return Err(PyValueError::new_err(format!(
            "{nbytes} bytes do not hold a {dtype} tensor of shape {shape:?} ({want} bytes)"
        )));
    }
    if nbytes > 0 && address == 0 {
        return Err(PyValueError::new_err("null address"));
    }
    let data = if nbytes == 0 {
        PyBytes::new(py, b"")
    } else {
        // SAFETY: the data pointer of a live C-contiguous tensor of exactly `nbytes` bytes
        // (checked against shape and dtype above), kept alive by the caller during this call.
        PyBytes::new(py, unsafe {
            std::slice::from_raw_parts(address as *const u8, nbytes)
        })
    };
    let fields = PyDict::new(py);
    fields.set_item("kind", kind)?;
    fields.set_item("dtype", dt.name())?;
    fields.set_item("shape", shape)?;
    fields.set_item("data", data)?;
    Ok(Record {
        name: INLINE_RECORD.to_string(),
        fields: fields.unbind(),
    })
}

fn check_kind(kind: &str) -> PyResult<()> {
    match kind {
        "numpy" | "torch" => Ok(()),
        _ => Err(PyValueError::new_err(format!(
            "kind must be 'numpy' or 'torch', got {kind:?}"
        ))),
    }
}

fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &s| n.checked_mul(s))
}

/// A received `nodecell.ndarray` record, checked: its kind, dtype, shape and bytes
/// (C-contiguous, exactly the bytes the shape needs).
pub(crate) struct InlineTensor {
    /// `numpy` or `torch`.
    pub(crate) kind: String,
    /// The element type.
    pub(crate) dtype: DType,
    /// The shape, in elements.
    pub(crate) shape: Vec<u64>,
    /// The elements.
    pub(crate) data: Vec<u8>,
}

impl InlineTensor {
    /// A DLPack source over the bytes (moved, not copied), for the channel's tensor hook.
    pub(crate) fn into_source(self) -> (DLSource, String) {
        let strides = crate::arena::contiguous(&self.shape);
        let bytes = Arc::new(Bytes(self.data));
        let ptr = bytes.0.as_ptr() as *mut u8;
        let src = DLSource::new(
            Keep::Bytes(bytes),
            ptr,
            self.dtype,
            self.shape,
            strides,
            false,
        );
        (src, self.kind)
    }
}

/// Checks the fields of a received `nodecell.ndarray` record (kind, dtype, shape
/// against the byte count).
pub(crate) fn inline_tensor_of(fields: Vec<(String, Value)>) -> PyResult<InlineTensor> {
    let bad =
        |why: &str| ProtocolViolation::new_err(format!("malformed {INLINE_RECORD} record: {why}"));
    let (mut kind, mut dtype, mut shape, mut data) = (None, None, None, None);
    for (k, v) in fields {
        match (k.as_str(), v) {
            ("kind", Value::Str(s)) => kind = Some(s),
            ("dtype", Value::Str(s)) => dtype = Some(s),
            ("shape", Value::List(items)) => {
                let mut dims = Vec::with_capacity(items.len());
                for i in items {
                    match i {
                        Value::Int(n) if n >= 0 => dims.push(n as u64),
                        _ => return Err(bad("shape must be non-negative ints")),
                    }
                }
                shape = Some(dims);
            }
            ("data", Value::Bytes(b)) => data = Some(b),
            (other, _) => return Err(bad(&format!("unexpected field {other:?}"))),
        }
    }
    let (Some(kind), Some(dtype), Some(shape), Some(data)) = (kind, dtype, shape, data) else {
        return Err(bad("a field is missing"));
    };
    check_kind(&kind).map_err(|_| bad("kind"))?;
    let dt = DType::from_name(&dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype:?}")))?;
    if shape.len() > 64 {
        return Err(bad("too many dimensions"));
    }
    let want = numel(&shape).and_then(|n| n.checked_mul(dt.itemsize()));
    if want != Some(data.len() as u64) {
        return Err(bad(&format!(
            "{} bytes for a {dtype} tensor of shape {shape:?}",
            data.len()
        )));
    }
    Ok(InlineTensor {
        kind,
        dtype: dt,
        shape,
        data,
    })
}

/// Owned bytes a received inline tensor lives in (never moved after creation).
pub struct Bytes(Vec<u8>);

// ---- the dtype table -------------------------------------------------------------------

/// The numpy dtype name of a wire dtype (None: numpy has no such dtype).
pub fn numpy_name(d: DType) -> Option<&'static str> {
    match d {
        DType::BF16 | DType::F8E4M3FN | DType::F8E5M2 => None,
        other => Some(other.name()),
    }
}

/// The wire dtypes: `(name, code, itemsize, numpy name or None, torch attribute name)`.
/// The one table the Python layer maps numpy and torch dtypes with.
#[pyfunction]
pub fn dtypes() -> Vec<(&'static str, u8, u64, Option<&'static str>, &'static str)> {
    DType::ALL
        .iter()
        .map(|&d| (d.name(), d.code(), d.itemsize(), numpy_name(d), d.name()))
        .collect()
}
