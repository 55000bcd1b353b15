//! nodecell's host/worker channel: frames over single-producer rings in a sealed
//! memfd, futex doorbells with adaptive spinning, an io_uring host reactor, and
//! tensor storage passed as sealed memfds.
//!
//! The host is trusted; the worker is not. Nothing a worker sends can make the host
//! panic, hang or take a SIGBUS: every index is read once and checked, every length
//! bounded, every received fd's seals and size verified before it is mapped, every
//! byte copied (or sealed immutable) before it is decoded. A violation poisons that
//! one channel with a typed [`Violation`]; other channels are untouched.
//!
//! # Main types
//! * [`Channel`]: one end of a host↔worker channel ([`channel`]).
//! * [`Frame`], [`Value`], [`TensorDesc`]: the wire format ([`frame`]); byte layout of
//!   the memfd and socket messages in [`layout`]; futex protocol in [`doorbell`].
//! * [`Arena`], [`TensorView`]: tensor storage and received tensors ([`arena`]);
//!   [`ArenaPool`]: arenas reused for the tensors a process sends ([`pool`]).
//! * [`Reactor`]: the host's event loop thread ([`reactor`]).
//! * [`probe::probe`]: what this kernel supports (`nodecell check`).
//!
//! # API for the Python layer
//!
//! Host, per worker:
//! ```no_run
//! # use nodecell_ipc::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (ch, worker_fds) = Channel::create(ChannelConfig::default())?;
//! let (ring_fd, sock_fd) = worker_fds.raw();      // -> subprocess(pass_fds=[ring_fd, sock_fd]),
//! # let pid = 1;                                   //    numbers on the worker's command line
//! drop(worker_fds);                               // after the spawn: close the host's copies
//! ch.set_peer_pid(pid)?;                          // launcher/worker pid -> pidfd
//! let reactor = Reactor::global()?;               // one io_uring thread per process
//! let token = reactor.register(&ch);              // loop.add_reader(reactor.event_fd(), on_events)
//! // on_events: for ev in reactor.drain(): Readable -> while let Some(f) = ch.try_recv()? {..}
//! //            PeerExited/PeerClosed -> ch.close("worker died") gives the pending call ids to fail
//! //            Deadline(id) -> fail call id (set with reactor.set_deadline(token, id, at))
//! let id = ch.send_call(0, "run", vec![Value::Int(1)], vec![])?;
//! if let Some(f) = ch.recv_spin(std::time::Duration::from_micros(20))? { /* fast path */ }
//! # Ok(()) }
//! ```
//! Worker: `Channel::open(WorkerFds::from_raw(ring_fd, sock_fd)?, ChannelConfig::default())`,
//! then `recv(None)` (spins, then sleeps on a futex: no busy loop when idle), `send`,
//! `reply`, `reply_error`, and `call` for re-entrant callbacks into the host.
//!
//! Tensors: the host makes an [`Arena::create`]`(len)`, writes through
//! [`Arena::as_ptr`] (numpy/torch wrap the address), seals it with
//! [`Arena::seal_read_only`] (inputs) or [`Arena::seal_output`] (buffers the worker
//! fills), then [`Channel::share_tensor`] gives a [`TensorDesc`] to put in a
//! [`Value::Tensor`]. The receiver calls [`Channel::import`] (or `import_cow`) for a
//! [`TensorView`] (`as_ptr()`, `len()`) and [`Channel::release`] once per descriptor
//! received when done; the owner then retires the arena by itself (no timers). A
//! worker returns results in arenas from [`ArenaPool::take`] (sealed
//! [`Arena::seal_pooled`] and reused once released), or sealed immutable with
//! [`Arena::freeze`] on channels created with `frozen_outputs`.
#![deny(missing_docs)]

pub mod arena;
pub mod channel;
pub mod doorbell;
pub mod frame;
pub mod layout;
pub mod pool;
pub mod probe;
pub mod reactor;
pub mod ring;
mod sys;

pub use arena::{Arena, ArenaError, ArenaState, TensorView};
pub use channel::{Channel, ChannelConfig, WeakChannel, WorkerFds};
pub use channel::{DeviceMemory, DeviceSlot};
pub use doorbell::SpinPolicy;
pub use frame::{
    Call, DType, DecodeError, Device, EncodeError, ErrorValue, Frame, HandleKind, Limits, LogLevel,
    Origin, Record, Release, RemoteHandle, Side, TensorDesc, TensorError, TensorKind, Value,
    TENSOR_RECORD,
};
pub use pool::{ArenaPool, PoolStats};
pub use reactor::{Backend, Event, EventKind, Reactor, Token};

use std::sync::Arc;

/// A close-on-exec copy of a descriptor known only by its number (e.g. a pidfd
/// handed over from Python). The caller keeps (and closes) the original.
pub fn dup_raw_fd(raw: std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    sys::dup_number(raw)
}

/// A peer broke the protocol. The channel is poisoned; the host drops the worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// `head - tail` is more than the ring holds (or tail passed head).
    #[error("ring {ring} indices are corrupt: head {head}, tail {tail}, capacity {capacity}")]
    RingIndex {
        /// ring index (0 host→worker, 1 worker→host)
        ring: usize,
        /// head seen
        head: u64,
        /// tail seen
        tail: u64,
        /// slots
        capacity: u64,
    },
    /// The consumer's tail moved backwards (a ring made to look full) or past the head.
    #[error("ring {ring} tail moved from {was} to {now}, outside [{was}, head {head}]")]
    TailMoved {
        /// ring index (0 host→worker, 1 worker→host)
        ring: usize,
        /// tail last seen
        was: u64,
        /// tail seen now
        now: u64,
        /// the producer's head
        head: u64,
    },
    /// The peer consumed nothing while frames waited for ring space for too long.
    #[error(
        "the peer read nothing from ring {ring} for {waited_ms} ms while {queued} bytes waited"
    )]
    Stalled {
        /// ring index
        ring: usize,
        /// how long nothing moved
        waited_ms: u64,
        /// bytes waiting in the outbox
        queued: u64,
    },
    /// Unknown record kind or non-zero reserved bits.
    #[error("bad record header: kind {kind}, reserved {reserved}")]
    RecordHeader {
        /// kind found
        kind: u16,
        /// reserved found
        reserved: u16,
    },
    /// A record or spilled frame longer than allowed, or than what was published.
    #[error("record length {len} exceeds {limit}")]
    RecordLength {
        /// length claimed
        len: u64,
        /// what is allowed
        limit: u64,
    },
    /// The frame bytes do not decode.
    #[error("undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    /// A slot id that no received descriptor has.
    #[error("unknown arena slot {slot}")]
    UnknownSlot {
        /// slot id
        slot: u64,
    },
    /// A slot of the wrong kind for its use (or an unknown kind).
    #[error("slot {slot} has the wrong kind ({kind})")]
    SlotKind {
        /// slot id
        slot: u64,
        /// its kind
        kind: u8,
    },
    /// A received memfd lacks required seals (or has forbidden ones).
    #[error("slot {slot}: seals {have:#x}, need {need:#x}")]
    Seals {
        /// slot id
        slot: u64,
        /// F_GET_SEALS
        have: u32,
        /// required
        need: u32,
    },
    /// A received descriptor is not a memfd.
    #[error("slot {slot} is not a sealable memfd")]
    NotMemfd {
        /// slot id
        slot: u64,
    },
    /// A received memfd is smaller than what names it.
    #[error("slot {slot} has {size} bytes, {need} needed")]
    ArenaSize {
        /// slot id
        slot: u64,
        /// fstat size
        size: u64,
        /// bytes needed
        need: u64,
    },
    /// A malformed fd message on the socket.
    #[error("bad fd message: {reason}")]
    FdMessage {
        /// what is wrong
        reason: &'static str,
    },
    /// CUDA memory arrived on a channel that does not carry it (`share_cuda_ipc` off).
    #[error("slot {slot}: CUDA memory sent on a channel without share_cuda_ipc")]
    CudaNotAllowed {
        /// slot id
        slot: u64,
    },
    /// A slot sent as a CUDA allocation whose descriptor is not an NVIDIA driver file.
    #[error("slot {slot} claims to be a CUDA allocation but is not an NVIDIA device file")]
    NotCudaHandle {
        /// slot id
        slot: u64,
    },
    /// A CUDA allocation size that is 0, not page-aligned, or above the limit.
    #[error("slot {slot}: CUDA allocation of {size} bytes (must be a non-zero multiple of 4096, at most {limit})")]
    CudaSize {
        /// slot id
        slot: u64,
        /// size claimed by the sender
        size: u64,
        /// largest allowed
        limit: u64,
    },
    /// More received descriptors open than allowed.
    #[error("more than {limit} descriptors received")]
    TooManyFds {
        /// limit
        limit: usize,
    },
    /// A slot id sent twice.
    #[error("slot {slot} sent twice")]
    DuplicateSlot {
        /// slot id
        slot: u64,
    },
    /// A tensor descriptor that does not fit its arena.
    #[error("tensor: {0}")]
    Tensor(TensorError),
    /// A release of more references than were given.
    #[error("release of {count} references on slot {slot}, {held} held")]
    Release {
        /// slot id
        slot: u64,
        /// released
        count: u64,
        /// outstanding
        held: u64,
    },
    /// Too many frames buffered while a send waited.
    #[error("peer flooded {bytes} bytes while we waited (limit {limit})")]
    Flood {
        /// bytes queued
        bytes: u64,
        /// limit
        limit: u64,
    },
}

/// Errors from [`Channel`] operations.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer broke the protocol (the channel is poisoned).
    #[error("protocol violation by the peer: {0}")]
    Violation(Violation),
    /// The peer process exited or closed its end.
    #[error("peer gone: {reason}")]
    PeerGone {
        /// how it was noticed
        reason: String,
    },
    /// This end was closed.
    #[error("channel closed: {reason}")]
    Closed {
        /// why
        reason: String,
    },
    /// A wait ran out.
    #[error("timed out: {op}")]
    Timeout {
        /// what waited
        op: &'static str,
    },
    /// A syscall failed.
    #[error("{op}: {source}")]
    Io {
        /// what was being done
        op: &'static str,
        /// the error
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A frame could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    /// A bad configuration value.
    #[error("bad channel config {field}: {value}")]
    Config {
        /// field
        field: &'static str,
        /// value
        value: u64,
    },
    /// A non-blocking send found the outbox full: the peer reads too slowly. Nothing
    /// of this frame was sent; the channel stays usable.
    #[error("{queued} bytes already wait for the peer to read them (limit {limit})")]
    Backlog {
        /// bytes waiting
        queued: u64,
        /// the limit
        limit: u64,
    },
    /// The caller used the API wrongly (not a peer fault).
    #[error("{what}")]
    Misuse {
        /// what
        what: String,
    },
}

/// Errors from opening a channel on the worker side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The ring fd is not a memfd (or not sealable).
    #[error("the channel fd is not a sealable memfd")]
    NotMemfd,
    /// The memfd is not sealed as required.
    #[error("channel memfd seals {have:#x}, need {need:#x} and no write seals")]
    Seals {
        /// F_GET_SEALS
        have: u32,
        /// required
        need: u32,
    },
    /// A header field is wrong.
    #[error("channel header {field} is invalid: {value}")]
    Header {
        /// field
        field: &'static str,
        /// value found
        value: u64,
    },
    /// A syscall failed.
    #[error("{op}: {source}")]
    Io {
        /// what
        op: &'static str,
        /// error
        #[source]
        source: std::io::Error,
    },
}
