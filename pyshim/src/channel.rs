//! `Channel`: one end of a host↔worker channel, speaking Python values.
//!
//! Frames reach Python as `(kind, call_id, payload)`:
//!
//! | kind | payload |
//! |---|---|
//! | CALL / CALLBACK | `(target, method, args_tuple, kwargs_dict)` |
//! | REPLY | the value |
//! | ERROR | whatever the `decode_error` hook returns |
//! | CANCEL, HEARTBEAT | `None` |
//! | RELEASE | list of released handle ids (one entry per reference) |
//! | LOG | `(levelno, logger, message)` |
//!
//! Python values are converted in [`crate::values`] (shared with `Wire`); this
//! file adds what only the ring transport knows: tensors as arenas shared over
//! the channel (`tensor_value`) and mapped on arrival (`tensor_to_py`).

use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nodecell_ipc::{
    Channel, ChannelConfig, ChannelError, DType, Limits, Origin, Record as IpcRecord, Side,
    TensorDesc, Value, WorkerFds,
};
use pyo3::exceptions::{PyEOFError, PyOSError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::arena::{PyArena, PyView, ViewKeep};
use crate::dlpack::Keep;
use crate::markers::TensorRef;
use crate::values::{Hooks, ValueCodec, TENSOR_RECORD};
use crate::ProtocolViolation;

static NEXT_CHANNEL_ID: AtomicU64 = AtomicU64::new(1);

/// One end of a channel (rings in a sealed memfd + a socket for fds).
#[pyclass(name = "Channel", module = "nodecell._nodecell", frozen)]
pub struct PyChannel {
    ch: Channel,
    id: u64,
    hooks: Mutex<Option<Hooks>>,
    peer: Mutex<Option<WorkerFds>>,
    /// Our arenas shared on this channel, by slot (to hand the same memory back).
    own: Mutex<HashMap<u64, Weak<nodecell_ipc::Arena>>>,
}

pub(crate) fn channel_err(e: ChannelError) -> PyErr {
    match e {
        ChannelError::Violation(v) => ProtocolViolation::new_err(v.to_string()),
        ChannelError::PeerGone { reason } => PyEOFError::new_err(format!("peer gone: {reason}")),
        ChannelError::Closed { reason } => PyEOFError::new_err(format!("channel closed: {reason}")),
        ChannelError::Timeout { op } => PyTimeoutError::new_err(format!("timed out: {op}")),
        ChannelError::Encode(e) => PyValueError::new_err(format!("cannot encode frame: {e}")),
        ChannelError::Config { field, value } => {
            PyValueError::new_err(format!("bad channel config {field}: {value}"))
        }
        ChannelError::Misuse { what } => PyValueError::new_err(what),
        other => PyOSError::new_err(other.to_string()),
    }
}

fn host_config(max_frame: usize, send_timeout: f64) -> ChannelConfig {
    ChannelConfig {
        limits: Limits {
            max_frame,
            ..Limits::default()
        },
        send_timeout: Duration::from_secs_f64(send_timeout.max(0.001)),
        ..ChannelConfig::default()
    }
}

#[pymethods]
impl PyChannel {
    /// Host side: a new channel. `peer_fds()` gives the worker's two fds. `cuda`:
    /// CUDA memory may cross it (`share_cuda_ipc`; the worker learns it from the channel).
    #[staticmethod]
    #[pyo3(signature = (max_frame = 256 << 20, send_timeout = 5.0, cuda = false))]
    fn create(max_frame: usize, send_timeout: f64, cuda: bool) -> PyResult<Self> {
        let cfg = ChannelConfig {
            cuda,
            ..host_config(max_frame, send_timeout)
        };
        let (ch, fds) = Channel::create(cfg).map_err(channel_err)?;
        Ok(PyChannel::wrap(ch, Some(fds)))
    }

    /// Worker side: opens the channel from the host's fds (taking ownership of them).
    #[staticmethod]
    #[pyo3(signature = (ring_fd, sock_fd, max_frame = 256 << 20, send_timeout = 60.0))]
    fn open(ring_fd: i32, sock_fd: i32, max_frame: usize, send_timeout: f64) -> PyResult<Self> {
        let fds = WorkerFds::from_raw(ring_fd, sock_fd)
            .map_err(|e| PyOSError::new_err(format!("channel fds: {e}")))?;
        let ch = Channel::open(fds, host_config(max_frame, send_timeout))
            .map_err(|e| ProtocolViolation::new_err(format!("cannot open channel: {e}")))?;
        Ok(PyChannel::wrap(ch, None))
    }

    /// Host side: the worker's `(ring_fd, sock_fd)`, once. The caller owns (and closes) them.
    fn peer_fds(&self) -> PyResult<(i32, i32)> {
        let fds = self
            .peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                PyValueError::new_err("peer fds were already taken (or this is a worker end)")
            })?;
        let WorkerFds { ring, sock } = fds;
        Ok((ring.into_raw_fd(), sock.into_raw_fd()))
    }

    /// Watches the peer's process through `pidfd` (duplicated; the caller keeps its own).
    fn set_peer_pidfd(&self, pidfd: i32) -> PyResult<()> {
        // SAFETY: F_DUPFD_CLOEXEC on a caller-provided fd number only creates a new
        // descriptor (or fails); it never touches memory.
        let dup = unsafe { libc::fcntl(pidfd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(PyOSError::new_err(format!(
                "dup pidfd {pidfd}: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `dup` is a fresh descriptor we own.
        self.ch.set_peer_pidfd(unsafe { OwnedFd::from_raw_fd(dup) });
        Ok(())
    }

    /// Sets the Python callbacks used to encode and decode non-native values.
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

    /// Process-unique id of this channel end.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Whether CUDA memory may cross this channel (`share_cuda_ipc`).
    #[getter]
    fn cuda(&self) -> bool {
        self.ch.config().cuda
    }

    /// `host` or `worker`.
    #[getter]
    fn side(&self) -> &'static str {
        match self.ch.side() {
            Side::Host => "host",
            Side::Worker => "worker",
        }
    }

    /// Sends one frame (see the module docs for payloads).
    fn send(
        &self,
        py: Python<'_>,
        kind: u8,
        call_id: u64,
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let frame = self.build_frame(py, kind, call_id, payload)?;
        crate::cuda::before_send(py, self.id, kind)?;
        let ch = self.ch.clone();
        py.detach(move || ch.send(&frame)).map_err(channel_err)
    }

    /// The next frame if one is ready, else None (never blocks).
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let f = self.ch.try_recv().map_err(channel_err)?;
        f.map(|f| self.frame_to_py(py, f)).transpose()
    }

    /// Waits up to `timeout` seconds (None: forever) for a frame; None on timeout.
    #[pyo3(signature = (timeout = None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let ch = self.ch.clone();
        let t = timeout.map(|s| Duration::from_secs_f64(s.max(0.0)));
        match py.detach(move || ch.recv(t)) {
            Ok(f) => self.frame_to_py(py, f).map(Some),
            Err(ChannelError::Timeout { .. }) => Ok(None),
            Err(e) => Err(channel_err(e)),
        }
    }

    /// Spins (without sleeping) up to `max_us` microseconds for a frame.
    fn spin_recv(&self, py: Python<'_>, max_us: u64) -> PyResult<Option<Py<PyAny>>> {
        let ch = self.ch.clone();
        let f = py
            .detach(move || ch.recv_spin(Duration::from_micros(max_us)))
            .map_err(channel_err)?;
        f.map(|f| self.frame_to_py(py, f)).transpose()
    }

    /// Host: the caller polls for replies itself for a while (see ``spin_recv``): the
    /// worker need not ring the reactor's doorbell. Pair with ``resume_doorbell``.
    fn quiet_doorbell(&self) {
        self.ch.quiet_doorbell();
    }

    /// Host: hand waiting back to the reactor; True if frames arrived meanwhile
    /// (receive them with ``try_recv``, then call again).
    fn resume_doorbell(&self) -> bool {
        self.ch.resume_doorbell()
    }

    /// Sends queued releases now, if the ring has room.
    fn flush(&self) -> PyResult<()> {
        self.ch.flush().map_err(channel_err)
    }

    /// Whether the peer is alive (pidfd and socket), raising EOFError if not.
    fn check_alive(&self) -> PyResult<()> {
        self.ch.check_alive().map_err(channel_err)
    }

    /// The error that poisoned the channel, as text (None if healthy).
    fn failure(&self) -> Option<String> {
        self.ch.failure().map(|e| e.to_string())
    }

    /// Closes this end; returns the ids of our calls still pending.
    #[pyo3(signature = (reason = "closed"))]
    fn close(&self, reason: &str) -> Vec<u64> {
        // Drop the hooks (bound methods of the endpoint, which holds this channel:
        // a reference cycle the GC cannot see through this class) and our arena table.
        self.own.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).take();
        crate::cuda::forget_channel(self.id);
        self.ch.close(reason)
    }

    /// (peer arena slot, descriptors still held) for received tensors not yet released.
    fn held_tensors(&self) -> Vec<(u64, u64)> {
        self.ch.held_tensors()
    }

    fn __repr__(&self) -> String {
        format!("<nodecell Channel #{} {}>", self.id, self.side())
    }
}

impl PyChannel {
    fn wrap(ch: Channel, peer: Option<WorkerFds>) -> PyChannel {
        let id = NEXT_CHANNEL_ID.fetch_add(1, Ordering::Relaxed);
        if ch.config().cuda {
            crate::cuda::register_channel(id);
        }
        PyChannel {
            ch,
            id,
            hooks: Mutex::new(None),
            peer: Mutex::new(peer),
            own: Mutex::new(HashMap::new()),
        }
    }

    /// The underlying channel (for the reactor).
    pub(crate) fn channel(&self) -> &Channel {
        &self.ch
    }
}

impl ValueCodec for PyChannel {
    fn side(&self) -> Side {
        self.ch.side()
    }

    fn hooks(&self) -> &Mutex<Option<Hooks>> {
        &self.hooks
    }

    fn tensor_value(&self, py: Python<'_>, t: &TensorRef) -> PyResult<Value> {
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
        let arena = t.arena.bind(py);
        let desc = if let Some(d) =
            crate::cuda::tensor_desc(py, &self.ch, self.id, arena, t, dtype, &strides)?
        {
            d
        } else if let Ok(a) = arena.cast::<PyArena>() {
            let inner = &a.get().inner;
            let d = self
                .ch
                .share_tensor(inner, t.offset, dtype, &t.shape, Some(&strides))
                .map_err(channel_err)?;
            self.own
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(d.slot, Arc::downgrade(inner));
            d
        } else if let Ok(v) = arena.cast::<PyView>() {
            let v = &v.get().keep;
            let base = match (&v.echo, v.channel_id == self.id) {
                (Some(d), true) => d,
                _ => return Err(PyValueError::new_err(
                    "this tensor's storage belongs to another channel; copy it into an arena first",
                )),
            };
            let offset = base
                .offset
                .checked_add(t.offset)
                .ok_or_else(|| PyValueError::new_err("tensor offset overflows"))?;
            let probe = TensorDesc::new(
                base.slot,
                Origin::Receiver,
                offset,
                u64::MAX - offset,
                dtype,
                &t.shape,
                &strides,
                false,
            )
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let span = probe
                .span()
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            if t.offset
                .checked_add(span)
                .is_none_or(|end| end > base.nbytes)
            {
                return Err(PyValueError::new_err(
                    "tensor reaches outside the storage it was received in",
                ));
            }
            TensorDesc::new(
                base.slot,
                Origin::Receiver,
                offset,
                span,
                dtype,
                &t.shape,
                &strides,
                false,
            )
            .map_err(|e| PyValueError::new_err(e.to_string()))?
        } else {
            return Err(PyTypeError::new_err(
                "TensorRef.arena must be an Arena, a View, a CudaBuffer or a CudaView",
            ));
        };
        Ok(Value::Record(Box::new(IpcRecord {
            name: TENSOR_RECORD.to_string(),
            fields: vec![
                ("kind".to_string(), Value::Str(t.kind.clone())),
                ("t".to_string(), Value::Tensor(Box::new(desc))),
            ],
        })))
    }

    /// Builds the received tensor: a DLPack capsule over our own arena (echoed back)
    /// or over a mapping of the peer's, handed to the `decode_tensor(capsule, kind,
    /// writable)` hook, which makes the numpy array or torch tensor.
    fn tensor_to_py(&self, py: Python<'_>, d: &TensorDesc, kind: &str) -> PyResult<Py<PyAny>> {
        if d.device.is_cuda() {
            return crate::cuda::tensor_to_py(py, &self.ch, self.id, d);
        }
        let hook = self.hook(py, |h| &h.tensor)?;
        let shape: Vec<u64> = d.shape().to_vec();
        let strides: Vec<i64> = d.strides().to_vec();
        if d.origin == Origin::Receiver {
            // One of our own arenas coming back: the same memory, so data pointers match.
            let own = self
                .own
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&d.slot)
                .cloned();
            if let Some(a) = own.and_then(|w| w.upgrade()) {
                if a.state() != nodecell_ipc::ArenaState::Frozen {
                    let data = a.as_ptr().wrapping_add(d.offset as usize);
                    let src = crate::dlpack::DLSource::new(
                        Keep::Arena(a.clone()),
                        data,
                        d.dtype,
                        shape,
                        strides,
                        false,
                    );
                    return Ok(hook.call1((Bound::new(py, src)?, kind, true))?.unbind());
                }
            }
        }
        // The peer's arena (or a frozen one of ours): a fresh mapping. Output buffers
        // are mapped writable-shared; everything else copy-on-write, so no tensor made
        // here can fault on a write or reach the sender's memory.
        let view = if d.writable && d.origin == Origin::Sender {
            self.ch.import(d)
        } else {
            self.ch.import_cow(d)
        }
        .map_err(channel_err)?;
        let shared_writable = d.writable && view.writable();
        let keep = if d.origin == Origin::Sender {
            ViewKeep {
                view,
                release: Some((self.ch.clone(), d.clone())),
                channel_id: self.id,
                echo: Some(d.clone()),
            }
        } else {
            ViewKeep {
                view,
                release: None,
                channel_id: self.id,
                echo: None,
            }
        };
        let keep = Arc::new(keep);
        crate::dlpack::register_view(&keep);
        let data = keep
            .view
            .as_mut_ptr()
            .unwrap_or(keep.view.as_ptr() as *mut u8);
        let src = crate::dlpack::DLSource::new(
            Keep::View(keep),
            data,
            d.dtype,
            shape,
            strides,
            !shared_writable,
        );
        Ok(hook
            .call1((Bound::new(py, src)?, kind, shared_writable))?
            .unbind())
    }
}
