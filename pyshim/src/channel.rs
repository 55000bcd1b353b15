//! `Channel`: one end of a host↔worker channel, speaking Python values.
//!
//! Frames reach Python as `(kind, call_id, payload)`:
//!
//! | kind | payload |
//! |---|---|
//! | CALL / CALLBACK | `(target, method, args_tuple, kwargs_dict, parent_call_id or None)`; when the arguments cannot be built here, `args` is the exception and `kwargs` None |
//! | REPLY | the value |
//! | ERROR | whatever the `decode_error` hook returns |
//! | CANCEL, HEARTBEAT | `None` |
//! | RELEASE | list of released handle ids (one entry per reference) |
//! | LOG | `(levelno, logger, message)` |
//!
//! Python values are converted in [`crate::values`] (shared with other transports);
//! tensors shared over the channel and mapped on arrival are [`crate::tensor`]'s.
//! Errors are typed:
//! `ProtocolViolation` (the peer broke the protocol; the channel is poisoned),
//! `PeerGone` (the peer exited or closed its end), `ChannelClosed` (this end was
//! closed: every resource it held is already released), `ChannelBacklog` (a
//! non-blocking send found too much waiting for the peer).

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use nodecell_ipc::{
    Call, Channel, ChannelConfig, ChannelError, Frame, Limits, Side, TensorDesc, Value, WorkerFds,
};
use pyo3::exceptions::{PyOSError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::markers::TensorRef;
use crate::tools::PyCallStats;
use crate::values::{Hooks, ValueCodec};
use crate::{ChannelBacklog, ChannelClosed, PeerGone, ProtocolViolation};

static NEXT_CHANNEL_ID: AtomicU64 = AtomicU64::new(1);

/// `call_spin`: the answer came, payload is the value.
pub(crate) const CALL_DONE: u8 = 0;
/// `call_spin`: the answer came, payload is the exception.
pub(crate) const CALL_FAILED: u8 = 1;
/// `call_spin`: another frame came first (payload); the doorbell stays quiet.
pub(crate) const CALL_OTHER: u8 = 2;
/// `call_spin`: no answer yet.
pub(crate) const CALL_WAIT: u8 = 3;
/// `call_spin`: receiving failed after the call was sent (payload: the exception).
pub(crate) const CALL_BROKEN: u8 = 4;

/// One end of a channel (rings in a sealed memfd + a socket for fds).
#[pyclass(name = "Channel", module = "nodecell._nodecell", frozen)]
pub struct PyChannel {
    /// None once closed: closing drops everything the channel holds.
    ch: RwLock<Option<Channel>>,
    closed_reason: Mutex<Option<String>>,
    id: u64,
    side: Side,
    cuda: bool,
    hooks: Mutex<Option<Hooks>>,
    peer: Mutex<Option<WorkerFds>>,
    /// Our arenas shared on this channel, by slot (to hand the same memory back).
    own: crate::tensor::OwnArenas,
    /// The profiler's switch: time the decoding of received frames.
    profiling: AtomicBool,
    /// Nanoseconds the last received frame took to become Python values (when profiling).
    last_decode_ns: AtomicU64,
}

/// The Python exception for a channel error.
pub(crate) fn channel_err(e: ChannelError) -> PyErr {
    match e {
        ChannelError::Violation(v) => ProtocolViolation::new_err(v.to_string()),
        ChannelError::PeerGone { reason } => PeerGone::new_err(format!("peer gone: {reason}")),
        ChannelError::Closed { reason } => {
            ChannelClosed::new_err(format!("channel closed: {reason}"))
        }
        ChannelError::Timeout { op } => PyTimeoutError::new_err(format!("timed out: {op}")),
        ChannelError::Backlog { queued, limit } => ChannelBacklog::new_err(format!(
            "{queued} bytes already wait for the peer to read them (limit {limit}); nothing was sent"
        )),
        ChannelError::Encode(e) => PyValueError::new_err(format!("cannot encode frame: {e}")),
        ChannelError::Config { field, value } => {
            PyValueError::new_err(format!("bad channel config {field}: {value}"))
        }
        ChannelError::Misuse { what } => PyValueError::new_err(what),
        other => PyOSError::new_err(other.to_string()),
    }
}

fn config(max_frame: usize, send_timeout: f64, nonblocking_send: bool) -> ChannelConfig {
    ChannelConfig {
        limits: Limits {
            max_frame,
            ..Limits::default()
        },
        send_timeout: Duration::from_secs_f64(send_timeout.max(0.001)),
        nonblocking_send,
        ..ChannelConfig::default()
    }
}

#[pymethods]
impl PyChannel {
    /// Host side: a new channel. `peer_fds()` gives the worker's two fds. `cuda`:
    /// CUDA memory may cross it (`share_cuda_ipc`; the worker learns it from the
    /// channel). Sends never block: what does not fit waits in an outbox that the
    /// reactor flushes as the worker frees space; a worker that reads nothing for
    /// `stall_timeout` seconds while frames wait poisons the channel.
    /// `frozen_outputs`: the worker must send immutable (write-sealed) tensors.
    #[staticmethod]
    #[pyo3(signature = (max_frame = 256 << 20, stall_timeout = 10.0, cuda = false, frozen_outputs = false))]
    fn create(
        max_frame: usize,
        stall_timeout: f64,
        cuda: bool,
        frozen_outputs: bool,
    ) -> PyResult<Self> {
        let cfg = ChannelConfig {
            cuda,
            frozen_outputs,
            ..config(max_frame, stall_timeout, true)
        };
        let (ch, fds) = Channel::create(cfg).map_err(channel_err)?;
        Ok(PyChannel::wrap(ch, Some(fds)))
    }

    /// Worker side: opens the channel from the host's fds (taking ownership of them).
    /// Sends wait up to `send_timeout` seconds for ring space.
    #[staticmethod]
    #[pyo3(signature = (ring_fd, sock_fd, max_frame = 256 << 20, send_timeout = 60.0))]
    fn open(ring_fd: i32, sock_fd: i32, max_frame: usize, send_timeout: f64) -> PyResult<Self> {
        let fds = WorkerFds::from_raw(ring_fd, sock_fd)
            .map_err(|e| PyOSError::new_err(format!("channel fds: {e}")))?;
        let ch = Channel::open(fds, config(max_frame, send_timeout, false))
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
        let dup = nodecell_ipc::dup_raw_fd(pidfd)
            .map_err(|e| PyOSError::new_err(format!("dup pidfd {pidfd}: {e}")))?;
        self.ch()?.set_peer_pidfd(dup);
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
        self.cuda
    }

    /// Whether the worker's tensors must be immutable copies (`frozen_outputs`; the
    /// worker learns it from the channel).
    #[getter]
    fn frozen_outputs(&self) -> PyResult<bool> {
        Ok(self.ch()?.config().frozen_outputs)
    }

    /// `host` or `worker`.
    #[getter]
    fn side(&self) -> &'static str {
        match self.side {
            Side::Host => "host",
            Side::Worker => "worker",
        }
    }

    /// Whether this end was closed (its resources are released).
    #[getter]
    fn closed(&self) -> bool {
        self.ch.read().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Sends one frame (see the module docs for payloads). Returns True when it is in
    /// the ring, False when it (or what was sent before it) waits in the outbox for the
    /// peer to make room: a host send never blocks.
    pub(crate) fn send(
        &self,
        py: Python<'_>,
        kind: u8,
        call_id: u64,
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let ch = self.ch()?;
        let codec = self.codec(&ch);
        let frame = codec.build_frame(py, kind, call_id, payload)?;
        crate::cuda::before_send(py, self.id, kind)?;
        let sent = self.push(py, &ch, frame);
        drop(codec); // the frame's arenas: the channel holds what the peer names now
        sent
    }

    /// Sends a call: `target`'s `method` with `args` (a tuple) and `kwargs` (a dict);
    /// `parent`: the id of the peer's call this one is made while serving (so the
    /// peer can run it on the thread that waits for that call). Returns like `send`.
    #[pyo3(signature = (call_id, target, method, args, kwargs, parent = None))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_call(
        &self,
        py: Python<'_>,
        call_id: u64,
        target: u64,
        method: String,
        args: &Bound<'_, PyTuple>,
        kwargs: &Bound<'_, PyDict>,
        parent: Option<u64>,
    ) -> PyResult<bool> {
        let ch = self.ch()?;
        let codec = self.codec(&ch);
        let frame = call_frame(py, &codec, call_id, target, method, args, kwargs, parent)?;
        crate::cuda::before_send(py, self.id, nodecell_ipc::frame::kind::CALL)?;
        let sent = self.push(py, &ch, frame);
        drop(codec); // the frame's arenas: the channel holds what the peer names now
        sent
    }

    /// Host: makes call `call_id` and spins up to `spin_ns` nanoseconds (GIL released)
    /// for its answer, the doorbell quiet meanwhile (see ``quiet_doorbell``). Returns
    /// `(state, payload, more, elapsed_ns, next_spin_ns)`: `CALL_DONE` (payload: the
    /// value), `CALL_FAILED` (the exception: the worker's error, or a value this side
    /// cannot build), `CALL_WAIT` (no answer yet, or the call waits in the outbox),
    /// `CALL_OTHER` (another frame came first: payload is it as `(kind, call_id,
    /// payload)`; the doorbell is left quiet: keep polling, then ``resume_doorbell``),
    /// `CALL_BROKEN` (receiving failed after the call was sent: payload is the
    /// exception). `more`: frames arrived after the doorbell was re-armed (receive
    /// them). `elapsed_ns`: since this method began; `next_spin_ns`: the spin window
    /// for the next call ([`next_spin_ns`] once answered, else `spin_ns`). An answered
    /// call (done or failed) is counted in `stats` when given. The caller must own
    /// receiving on this channel (nobody else may take the answer). Raises like
    /// ``send_call`` when the call could not be sent (the doorbell is re-armed then).
    #[pyo3(signature = (call_id, target, method, args, kwargs, spin_ns, stats = None))]
    #[allow(clippy::too_many_arguments)]
    fn call_spin(
        &self,
        py: Python<'_>,
        call_id: u64,
        target: u64,
        method: String,
        args: &Bound<'_, PyTuple>,
        kwargs: &Bound<'_, PyDict>,
        spin_ns: u64,
        stats: Option<&Bound<'_, PyCallStats>>,
    ) -> PyResult<(u8, Py<PyAny>, bool, u64, u64)> {
        let stats = stats.map(|s| s.get());
        self.spin_call(py, call_id, target, method, args, kwargs, spin_ns, stats)
    }

    /// The next frame if one is ready, else None (never blocks).
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let ch = self.ch()?;
        let f = ch.try_recv().map_err(channel_err)?;
        f.map(|f| self.decode(py, &ch, f)).transpose()
    }

    /// Profiling: time the decoding of each received frame into Python values
    /// (read with `last_decode_ns`); off by default (then nothing is timed).
    fn set_profiling(&self, on: bool) {
        self.profiling.store(on, Ordering::Relaxed);
    }

    /// Nanoseconds the last received frame took to decode (0 unless profiling).
    #[getter]
    fn last_decode_ns(&self) -> u64 {
        self.last_decode_ns.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` seconds (None: forever) for a frame; None on timeout.
    #[pyo3(signature = (timeout = None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let ch = self.ch()?;
        let t = timeout.map(|s| Duration::from_secs_f64(s.max(0.0)));
        let c = ch.clone();
        match py.detach(move || c.recv(t)) {
            Ok(f) => self.decode(py, &ch, f).map(Some),
            Err(ChannelError::Timeout { .. }) => Ok(None),
            Err(e) => Err(channel_err(e)),
        }
    }

    /// Spins (without sleeping) up to `max_us` microseconds for a frame.
    fn spin_recv(&self, py: Python<'_>, max_us: u64) -> PyResult<Option<Py<PyAny>>> {
        let ch = self.ch()?;
        let c = ch.clone();
        let f = py
            .detach(move || c.recv_spin(Duration::from_micros(max_us)))
            .map_err(channel_err)?;
        f.map(|f| self.decode(py, &ch, f)).transpose()
    }

    /// Host: the caller polls for replies itself for a while (see ``spin_recv``): the
    /// worker need not ring the reactor's doorbell. Pair with ``resume_doorbell``.
    fn quiet_doorbell(&self) -> PyResult<()> {
        self.ch()?.quiet_doorbell();
        Ok(())
    }

    /// Host: hand waiting back to the reactor; True if frames arrived meanwhile
    /// (receive them with ``try_recv``, then call again).
    fn resume_doorbell(&self) -> PyResult<bool> {
        Ok(self.ch()?.resume_doorbell())
    }

    /// Sends queued releases now, if the ring has room.
    fn flush(&self) -> PyResult<()> {
        self.ch()?.flush().map_err(channel_err)
    }

    /// Pushes what waits in the outbox as far as the peer made room (the reactor does
    /// this by itself); True when nothing waits any more.
    fn flush_out(&self) -> PyResult<bool> {
        self.ch()?.flush_out().map_err(channel_err)
    }

    /// Bytes of frames waiting in the outbox for the peer to make room.
    #[getter]
    fn outbox_bytes(&self) -> PyResult<usize> {
        Ok(self.ch()?.outbox_bytes())
    }

    /// Whether the peer is alive (pidfd and socket), raising PeerGone if not.
    fn check_alive(&self) -> PyResult<()> {
        self.ch()?.check_alive().map_err(channel_err)
    }

    /// The error that poisoned the channel, as text (None if healthy).
    fn failure(&self) -> Option<String> {
        match self.ch() {
            Ok(ch) => ch.failure().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Closes this end and releases everything it holds (ring memfd and mapping,
    /// socket, received descriptors and their mappings, shared arenas): received
    /// tensors stay valid, nothing else of the channel outlives this call except in
    /// the reactor until it lets go. Returns the ids of our calls still pending.
    #[pyo3(signature = (reason = "closed"))]
    fn close(&self, reason: &str) -> Vec<u64> {
        // Drop the hooks (bound methods of the endpoint, which holds this channel:
        // a reference cycle the GC cannot see through this class) and our arena table.
        self.own.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.peer.lock().unwrap_or_else(|e| e.into_inner()).take();
        crate::cuda::forget_channel(self.id);
        let ch = self.ch.write().unwrap_or_else(|e| e.into_inner()).take();
        let Some(ch) = ch else {
            return Vec::new();
        };
        *self.closed_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        ch.close(reason)
    }

    /// (peer arena slot, descriptors still held) for received tensors not yet released.
    fn held_tensors(&self) -> PyResult<Vec<(u64, u64)>> {
        Ok(self.ch()?.held_tensors())
    }

    fn __repr__(&self) -> String {
        format!("<nodecell Channel #{} {}>", self.id, self.side())
    }
}

impl PyChannel {
    /// `call_spin` for Rust callers (the host's fast path, `crate::fastcall`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spin_call(
        &self,
        py: Python<'_>,
        call_id: u64,
        target: u64,
        method: String,
        args: &Bound<'_, PyTuple>,
        kwargs: &Bound<'_, PyDict>,
        spin_ns: u64,
        stats: Option<&PyCallStats>,
    ) -> PyResult<(u8, Py<PyAny>, bool, u64, u64)> {
        let t0 = Instant::now();
        let ch = self.ch()?;
        let codec = self.codec(&ch);
        let frame = call_frame(py, &codec, call_id, target, method, args, kwargs, None)?;
        crate::cuda::before_send(py, self.id, nodecell_ipc::frame::kind::CALL)?;
        ch.quiet_doorbell();
        // One release of the GIL for the send and the spin.
        let c = ch.clone();
        let spin = Duration::from_nanos(spin_ns);
        let got = py.detach(move || match c.send(&frame) {
            Err(e) => Err(e),
            // Queued in the outbox: no answer can come before the worker reads it.
            Ok(()) if c.has_outbox() => Ok(Ok(None)),
            Ok(()) => Ok(c.recv_spin(spin)),
        });
        drop(codec); // the frame's arenas: the channel holds what the peer names now
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                ch.resume_doorbell();
                return Err(channel_err(e));
            }
        };
        let (state, payload) = self.answer(py, &ch, call_id, got);
        let more = state != CALL_OTHER && ch.resume_doorbell();
        let elapsed = t0.elapsed().as_nanos() as u64;
        let mut next = spin_ns;
        if state == CALL_DONE || state == CALL_FAILED {
            next = next_spin_ns(elapsed, spin_ns);
            if let Some(stats) = stats {
                stats.record_call(elapsed, state == CALL_FAILED);
            }
        }
        Ok((state, payload, more, elapsed, next))
    }

    fn wrap(ch: Channel, peer: Option<WorkerFds>) -> PyChannel {
        let id = NEXT_CHANNEL_ID.fetch_add(1, Ordering::Relaxed);
        let cuda = ch.config().cuda;
        if cuda {
            crate::cuda::register_channel(id);
        }
        PyChannel {
            side: ch.side(),
            ch: RwLock::new(Some(ch)),
            closed_reason: Mutex::new(None),
            id,
            cuda,
            hooks: Mutex::new(None),
            peer: Mutex::new(peer),
            own: Mutex::new(HashMap::new()),
            profiling: AtomicBool::new(false),
            last_decode_ns: AtomicU64::new(0),
        }
    }

    /// The channel, or ChannelClosed once this end was closed.
    pub(crate) fn ch(&self) -> PyResult<Channel> {
        if let Some(ch) = self.ch.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(ch.clone());
        }
        let reason = self
            .closed_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "closed".into());
        Err(ChannelClosed::new_err(format!("channel closed: {reason}")))
    }

    fn codec<'a>(&'a self, ch: &'a Channel) -> Codec<'a> {
        Codec {
            ch,
            id: self.id,
            hooks: &self.hooks,
            own: &self.own,
            in_flight: Mutex::new(Vec::new()),
        }
    }

    /// What spinning for call `call_id`'s answer got, as `call_spin` returns it: `(state, payload)`.
    fn answer(
        &self,
        py: Python<'_>,
        ch: &Channel,
        call_id: u64,
        got: Result<Option<Frame>, ChannelError>,
    ) -> (u8, Py<PyAny>) {
        let f = match got {
            Ok(Some(f)) => f,
            Ok(None) => return (CALL_WAIT, py.None()),
            Err(e) => return (CALL_BROKEN, channel_err(e).into_value(py).into_any()),
        };
        let codec = self.codec(ch);
        let answer = match f {
            Frame::Reply { id, value } if id == call_id => match codec.to_py(py, value) {
                Ok(v) => Ok((CALL_DONE, v)),
                Err(e) => Ok((CALL_FAILED, e.into_value(py).into_any())),
            },
            Frame::Error { id, error } if id == call_id => codec
                .hook(py, |h| &h.error)
                .and_then(|hook| hook.call1((error.type_name, error.message, error.traceback)))
                .map(|e| (CALL_FAILED, e.unbind())),
            other => {
                drop(codec);
                self.decode(py, ch, other).map(|f| (CALL_OTHER, f))
            }
        };
        answer.unwrap_or_else(|e| (CALL_BROKEN, e.into_value(py).into_any()))
    }

    /// Waits up to `timeout` for a frame, the GIL released; None on timeout.
    pub(crate) fn recv_frame(
        &self,
        py: Python<'_>,
        ch: &Channel,
        timeout: Duration,
    ) -> PyResult<Option<Frame>> {
        let c = ch.clone();
        match py.detach(move || c.recv(Some(timeout))) {
            Ok(f) => Ok(Some(f)),
            Err(ChannelError::Timeout { .. }) => Ok(None),
            Err(e) => Err(channel_err(e)),
        }
    }

    /// A call's arguments as Python values: `(args, kwargs)`.
    pub(crate) fn call_args<'py>(
        &self,
        py: Python<'py>,
        ch: &Channel,
        args: Vec<Value>,
        kwargs: Vec<(String, Value)>,
    ) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
        let codec = self.codec(ch);
        let mut a = Vec::with_capacity(args.len());
        for v in args {
            a.push(codec.to_py(py, v)?);
        }
        let kw = PyDict::new(py);
        for (name, v) in kwargs {
            kw.set_item(name, codec.to_py(py, v)?)?;
        }
        Ok((PyTuple::new(py, a)?, kw))
    }

    /// A received frame as Python values; timed when profiling (`last_decode_ns`).
    pub(crate) fn decode(&self, py: Python<'_>, ch: &Channel, f: Frame) -> PyResult<Py<PyAny>> {
        if !self.profiling.load(Ordering::Relaxed) {
            return self.codec(ch).frame_to_py(py, f);
        }
        let t = std::time::Instant::now();
        let r = self.codec(ch).frame_to_py(py, f);
        self.last_decode_ns
            .store(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    fn push(&self, py: Python<'_>, ch: &Channel, frame: Frame) -> PyResult<bool> {
        let c = ch.clone();
        py.detach(move || c.send(&frame)).map_err(channel_err)?;
        Ok(!ch.has_outbox())
    }
}

/// The ring transport's [`ValueCodec`] for one operation on an open channel end.
struct Codec<'a> {
    /// The channel (a clone taken for this operation).
    ch: &'a Channel,
    /// The Python channel object's id.
    id: u64,
    /// The Python hooks.
    hooks: &'a Mutex<Option<Hooks>>,
    /// Our arenas shared on this channel, by slot.
    own: &'a crate::tensor::OwnArenas,
    /// Our arenas the frame being built names, held until it is sent.
    in_flight: crate::tensor::InFlight,
}

impl Codec<'_> {
    /// This end as the tensor code sees it.
    fn tensor_end(&self) -> crate::tensor::End<'_> {
        crate::tensor::End {
            ch: self.ch,
            id: self.id,
            own: self.own,
            in_flight: &self.in_flight,
        }
    }
}

impl ValueCodec for Codec<'_> {
    fn side(&self) -> Side {
        self.ch.side()
    }

    fn hooks(&self) -> &Mutex<Option<Hooks>> {
        self.hooks
    }

    fn tensor_value(&self, py: Python<'_>, t: &TensorRef) -> PyResult<Value> {
        crate::tensor::tensor_value(&self.tensor_end(), py, t)
    }

    fn tensor_fast(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Option<Value>> {
        crate::torchfast::encode(&self.tensor_end(), py, obj)
    }

    /// Builds the received tensor (see [`crate::tensor::tensor_to_py`]): a DLPack
    /// source over our own arena or over a mapping of the peer's, handed to the
    /// `decode_tensor(src, kind, writable)` hook.
    fn tensor_to_py(&self, py: Python<'_>, d: &TensorDesc, kind: &str) -> PyResult<Py<PyAny>> {
        if d.device.is_cuda() {
            return crate::cuda::tensor_to_py(py, self.ch, self.id, d);
        }
        let hook = || self.hook(py, |h| &h.tensor);
        crate::tensor::tensor_to_py(&self.tensor_end(), py, &hook, d, kind)
    }
}

/// A CALL frame from Python arguments (`kwargs` names must be str).
#[allow(clippy::too_many_arguments)]
fn call_frame(
    py: Python<'_>,
    codec: &Codec<'_>,
    call_id: u64,
    target: u64,
    method: String,
    args: &Bound<'_, PyTuple>,
    kwargs: &Bound<'_, PyDict>,
    parent: Option<u64>,
) -> PyResult<Frame> {
    let mut a = Vec::with_capacity(args.len());
    for x in args.iter() {
        a.push(codec.to_value(py, &x, 0)?);
    }
    let mut kw = Vec::with_capacity(kwargs.len());
    for (key, v) in kwargs.iter() {
        let name: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err("keyword argument names must be str"))?;
        kw.push((name, codec.to_value(py, &v, 0)?));
    }
    Ok(Frame::Call(Call {
        id: call_id,
        parent,
        target,
        method,
        args: a,
        kwargs: kw,
        deadline_ns: 0,
    }))
}

/// The host's spin window after a call answered within its spin in `rtt_ns`: twice the
/// round trip, at least 50 us; 400 us after a reply of 200-400 us; halved from `spin_ns`
/// after a slower one (a waiting call's window is `Extension._wait_answer`'s).
pub(crate) fn next_spin_ns(rtt_ns: u64, spin_ns: u64) -> u64 {
    match rtt_ns {
        0..25_000 => 50_000,
        25_000..200_000 => 2 * rtt_ns,
        200_000..400_000 => 400_000,
        _ => spin_ns / 2,
    }
}
