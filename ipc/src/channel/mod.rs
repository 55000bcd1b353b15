//! One host↔worker channel: two rings in a sealed memfd plus a socketpair for fds.
//!
//! The host calls [`Channel::create`] and hands [`WorkerFds`] to the worker process
//! (`subprocess(pass_fds=...)`); the worker calls [`Channel::open`] on those fds.
//! From then on both sides are symmetric: either may send any [`Frame`], including
//! calls (host→worker calls and worker→host callbacks, re-entrant), with
//! [`Channel::send`], and receive with [`Channel::try_recv`] (non-blocking),
//! [`Channel::recv_spin`] (bounded spin) or [`Channel::recv`] (spin, then futex).
//!
//! Everything the host reads from worker-writable memory is copied (ring records)
//! or sealed immutable (spilled frames) before it is decoded. Any protocol violation
//! poisons the channel: every later operation returns the same
//! [`ChannelError::Violation`], and the host drops the worker.
//!
//! CUDA memory (channels whose host enabled `cuda`, i.e. `share_cuda_ipc`) travels
//! the same way as arenas: [`Channel::share_device`] sends an exported allocation's
//! fd once (socket kind CUDA, with its size), descriptors with device cuda name it,
//! reference counts and release frames keep it alive on the sender, and the receiver
//! gets the fd and size from [`Channel::device_slot`] to import it itself (this
//! crate never calls CUDA). See [`crate::layout`] for what is checked on receipt.
//!
//! The code is split by job: [`send`] (frames into the ring, fds over the socket),
//! [`recv`] (records out of the ring, blocking waits, calls), [`share`] (arenas and
//! CUDA memory, descriptors, releases) and [`fds`] (checking received descriptors).
//!
//! # Locks
//! `tx` (producer) → `rx` (consumer) → `fds` → `exports` → `imports`: a thread may
//! take a later lock while holding an earlier one, never the reverse.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::arena::{Arena, ArenaState, TensorView};
use crate::doorbell::{SpinPolicy, Spinner, Wake};
use crate::frame::{
    Call, Decoded, Device, ErrorValue, Frame, Limits, Origin, Release, Side, TensorDesc, Value,
};
use crate::layout::{self, Geometry};
use crate::ring::{Consumer, Producer, Push, Record, Shm};
use crate::sys::{self, Mapping, Protection};
use crate::{ChannelError, OpenError, Violation};

mod fds;
mod ids;
mod recv;
mod send;
mod share;

/// Channel sizes, limits and waiting behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// Slots per ring (power of two).
    pub slot_count: u32,
    /// Bytes per slot (power of two, >= 64).
    pub slot_size: u32,
    /// Frames up to this many bytes travel inside the ring; larger ones spill into a
    /// sealed memfd. Clamped to half a ring.
    pub max_inline: u32,
    /// Frame decoding limits (largest frame, depth, value count), both directions.
    pub limits: Limits,
    /// Spinning before sleeping, for blocking receives and full rings.
    pub spin: SpinPolicy,
    /// How long a send waits for ring or socket space. With `nonblocking_send`: how
    /// long the peer may read nothing while frames wait in the outbox before the
    /// channel is poisoned ([`Violation::Stalled`]).
    pub send_timeout: Duration,
    /// Sends never wait (the host: its event loop must not block on a worker). What
    /// does not fit in the ring or the socket waits, in order, in an outbox that
    /// [`Channel::flush_out`] (called by the [`crate::Reactor`] when the peer frees
    /// space) pushes on.
    pub nonblocking_send: bool,
    /// Most bytes of frames the outbox may hold (spilled frames count their full
    /// size); a send beyond it fails with [`ChannelError::Backlog`].
    pub max_outbox_bytes: usize,
    /// A blocking wait wakes at least this often to check the peer is alive
    /// (pidfd and socket); None: only on doorbells. (The reactor notices death at
    /// once; this bounds how late a plain blocking `recv` notices it.)
    pub liveness_slice: Option<Duration>,
    /// Most descriptors received from the peer that may be open at once.
    pub max_received_fds: usize,
    /// Most bytes of frames buffered while a send waits for space.
    pub max_queued_bytes: usize,
    /// Whether CUDA memory may cross (`share_cuda_ipc`). The host sets it; a worker
    /// takes it from the channel header instead (see [`crate::layout`]).
    pub cuda: bool,
    /// Most CUDA allocations received from the peer that may be open at once.
    pub max_cuda_fds: usize,
    /// Largest CUDA allocation, in bytes, a peer may announce.
    pub max_cuda_bytes: u64,
    /// Whether the host wants immutable outputs: a worker must send write-sealed
    /// (frozen) arenas, never pooled ones. The host sets it; a worker takes it from
    /// the channel header (see [`crate::layout`]).
    pub frozen_outputs: bool,
}

impl Default for ChannelConfig {
    fn default() -> ChannelConfig {
        ChannelConfig {
            slot_count: 8192,
            slot_size: 64,
            max_inline: 64 << 10,
            limits: Limits::default(),
            spin: SpinPolicy::default(),
            send_timeout: Duration::from_secs(30),
            nonblocking_send: false,
            max_outbox_bytes: 1 << 30,
            liveness_slice: Some(Duration::from_millis(100)),
            max_received_fds: 4096,
            max_queued_bytes: 512 << 20,
            cuda: false,
            max_cuda_fds: 256,
            max_cuda_bytes: 1 << 40,
            frozen_outputs: false,
        }
    }
}

impl ChannelConfig {
    fn geometry(&self) -> Geometry {
        let ring = self.slot_count as usize * self.slot_size as usize;
        let cap = (ring / 2).saturating_sub(layout::RECORD_HEADER) as u32;
        Geometry {
            slot_count: self.slot_count,
            slot_size: self.slot_size,
            max_inline: self.max_inline.min(cap),
        }
    }
}

/// The descriptors a worker needs: the channel memfd and its end of the socketpair.
#[derive(Debug)]
pub struct WorkerFds {
    /// The channel memfd.
    pub ring: OwnedFd,
    /// The worker's end of the socketpair.
    pub sock: OwnedFd,
}

impl WorkerFds {
    /// The raw numbers, for `subprocess(pass_fds=...)` and the worker's command line.
    pub fn raw(&self) -> (RawFd, RawFd) {
        (self.ring.as_raw_fd(), self.sock.as_raw_fd())
    }

    /// Takes copies (`dup`, close-on-exec) of descriptors known only by number, as a
    /// worker does with the numbers it was started with. Close the originals after.
    pub fn from_raw(ring: RawFd, sock: RawFd) -> std::io::Result<WorkerFds> {
        Ok(WorkerFds {
            ring: sys::dup_number(ring)?,
            sock: sys::dup_number(sock)?,
        })
    }
}

struct Tx {
    producer: Producer,
    buf: Vec<u8>,
    next_slot: u64,
    spinner: Spinner,
    /// Non-blocking sends: what waits for ring or socket space, in order.
    outbox: VecDeque<Out>,
    /// Bytes of frames in `outbox`.
    outbox_bytes: usize,
    /// When the outbox last shrank (or started filling): the stall clock.
    last_progress: Instant,
}

/// One item waiting in the outbox.
enum Out {
    /// A ring record (inline frame or spill reference); `cost`: the frame's bytes.
    Record {
        kind: u16,
        bytes: Vec<u8>,
        cost: usize,
    },
    /// An fd message for the socket (it precedes the records naming its slot).
    Fd { msg: Vec<u8>, fd: OwnedFd },
}

struct Rx {
    consumer: Consumer,
    buf: Vec<u8>,
    queue: VecDeque<(Frame, usize)>,
    queued_bytes: usize,
    spinner: Spinner,
}

struct Incoming {
    kind: u8,
    fd: OwnedFd,
    size: u64,
    map: Option<Arc<Mapping>>,
    /// Copy-on-write mappings kept for reuse (a few, as consecutive calls overlap):
    /// one no view holds any more is handed out again, its private pages discarded,
    /// instead of a new mmap per descriptor.
    cow: Vec<Arc<Mapping>>,
    /// CUDA slots: what the importer made of the fd (its mapping), kept until retired.
    attached: Option<Arc<dyn Any + Send + Sync>>,
}

#[derive(Default)]
struct FdTable {
    slots: HashMap<u64, Incoming>,
    /// How many of `slots` are CUDA allocations.
    cuda: usize,
}

impl FdTable {
    fn insert(&mut self, slot: u64, inc: Incoming) {
        if inc.kind == layout::FD_KIND_CUDA {
            self.cuda += 1;
        }
        self.slots.insert(slot, inc);
    }

    fn remove(&mut self, slot: &u64) -> Option<Incoming> {
        let inc = self.slots.remove(slot)?;
        if inc.kind == layout::FD_KIND_CUDA {
            self.cuda -= 1;
        }
        Some(inc)
    }
}

/// Device memory this process owns and can hand to the peer as an fd: a CUDA
/// allocation made exportable (`cuMemCreate` with POSIX fd handles). Implemented
/// outside this crate (the Python extension), which does the CUDA calls.
pub trait DeviceMemory: Send + Sync + 'static {
    /// A new descriptor for the peer (`cuMemExportToShareableHandle`); the channel
    /// sends it and closes its copy.
    fn export_fd(&self) -> std::io::Result<OwnedFd>;
    /// Bytes in the allocation (what the peer maps; a multiple of 4096).
    fn size(&self) -> u64;
    /// Which device it lives on (`Device::Cuda(ordinal)`).
    fn device(&self) -> Device;
    /// The implementing type, for downcasting.
    fn as_any(&self) -> &dyn Any;
}

/// A received CUDA slot, for the importer (see [`Channel::device_slot`]).
pub struct DeviceSlot {
    /// A duplicate of the received fd (None when something is already attached).
    pub fd: Option<OwnedFd>,
    /// The allocation size the sender announced (bounded; the driver checks it).
    pub size: u64,
    /// What [`Channel::attach_device`] stored for this slot, if anything.
    pub attached: Option<Arc<dyn Any + Send + Sync>>,
}

/// What an export keeps alive while the peer holds references.
enum Stored {
    Arena(Arc<Arena>),
    Device(Arc<dyn DeviceMemory>),
    /// A pinned arena slot with no reference outstanding: the peer keeps the fd, this
    /// side does not keep the arena alive (its pool does).
    Parked(std::sync::Weak<Arena>, u64),
}

impl Stored {
    fn len(&self) -> u64 {
        match self {
            Stored::Arena(a) => a.len() as u64,
            Stored::Device(d) => d.size(),
            Stored::Parked(_, len) => *len,
        }
    }

    fn is_device(&self) -> bool {
        matches!(self, Stored::Device(_))
    }
}

struct Export {
    stored: Stored,
    refs: u64,
    /// Kept (parked) instead of retired when `refs` drops to 0: a pooled arena.
    pinned: bool,
}

/// The key of a device allocation in `Exports::by_device` (its address; stable while
/// the export holds it).
fn device_key(d: &Arc<dyn DeviceMemory>) -> usize {
    Arc::as_ptr(d) as *const () as usize
}

#[derive(Default)]
struct Exports {
    /// Our arena ids and slots (never the peer's): the cheap hash.
    by_arena: ids::IdMap<u64>,
    by_device: HashMap<usize, u64>,
    slots: ids::IdMap<Export>,
    retire: Vec<u64>,
}

#[derive(Default)]
struct Imports {
    held: HashMap<u64, u64>,
    release: Vec<(u64, u64)>,
}

/// Reactor registration of a channel (set by [`crate::reactor::Reactor::register`]).
pub(crate) struct ReactorLink {
    pub(crate) reactor: Weak<crate::reactor::Shared>,
    pub(crate) token: crate::reactor::Token,
}

pub(crate) struct Inner {
    /// Process-unique id of this channel end (see [`Channel::id`]).
    id: u64,
    side: Side,
    shm: Arc<Shm>,
    sock: OwnedFd,
    cfg: ChannelConfig,
    tx: Mutex<Tx>,
    rx: Mutex<Rx>,
    fds: Mutex<FdTable>,
    exports: Mutex<Exports>,
    imports: Mutex<Imports>,
    pending: Mutex<ids::IdSet>,
    stash: Mutex<HashMap<u64, Frame>>,
    next_id: AtomicU64,
    failed_flag: AtomicBool,
    failed: Mutex<Option<ChannelError>>,
    peer_pidfd: Mutex<Option<Arc<OwnedFd>>>,
    inbound_tail: Arc<AtomicU64>,
    queued: AtomicBool,
    /// Set when releases or retirements wait in `exports`/`imports` to be sent.
    control_pending: AtomicBool,
    /// Set while the outbox holds anything (read by the reactor without the lock).
    outbox_pending: AtomicBool,
    pub(crate) reactor: Mutex<Option<ReactorLink>>,
}

/// One end of a channel. Cheap to clone (shared state); `Send + Sync`.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

/// A [`Channel`] reference that does not keep it alive ([`Channel::downgrade`]).
#[derive(Clone, Debug)]
pub struct WeakChannel {
    inner: Weak<Inner>,
}

impl WeakChannel {
    /// The channel, while someone else still holds it.
    pub fn upgrade(&self) -> Option<Channel> {
        self.inner.upgrade().map(|inner| Channel { inner })
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("side", &self.inner.side)
            .field("geometry", &self.inner.shm.geometry())
            .finish()
    }
}

/// Copy-on-write mappings kept per received arena for reuse.
const COW_CACHE: usize = 4;

static NEXT_CHANNEL_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ioerr(op: &'static str) -> impl FnOnce(std::io::Error) -> ChannelError {
    move |e| ChannelError::Io {
        op,
        source: Arc::new(e),
    }
}

/// Which ring this side produces into / consumes from.
fn rings(side: Side) -> (usize, usize) {
    match side {
        Side::Host => (layout::RING_TO_WORKER, layout::RING_TO_HOST),
        Side::Worker => (layout::RING_TO_HOST, layout::RING_TO_WORKER),
    }
}

impl Channel {
    /// Host side: creates the sealed channel memfd and socketpair. Give the returned
    /// [`WorkerFds`] to the worker process, then drop them here (so the worker's exit
    /// closes the socket).
    pub fn create(cfg: ChannelConfig) -> Result<(Channel, WorkerFds), ChannelError> {
        let geo = cfg.geometry();
        geo.check()
            .map_err(|(field, value)| ChannelError::Config { field, value })?;
        let shm = Arc::new(Shm::create(geo).map_err(ioerr("create channel memfd"))?);
        let (host_sock, worker_sock) = sys::seqpacket_pair().map_err(ioerr("socketpair"))?;
        let ring = sys::dup_cloexec(shm.fd()).map_err(ioerr("dup channel memfd"))?;
        let flags = if cfg.cuda {
            layout::HEADER_FLAG_CUDA
        } else {
            0
        } | if cfg.frozen_outputs {
            layout::HEADER_FLAG_FROZEN_OUTPUTS
        } else {
            0
        };
        if flags != 0 {
            sys::pwrite_all(shm.fd(), &flags.to_le_bytes(), layout::OFF_FLAGS as u64)
                .map_err(ioerr("write channel header flags"))?;
        }
        let ch = Channel::from_parts(Side::Host, shm, host_sock, cfg);
        Ok((
            ch,
            WorkerFds {
                ring,
                sock: worker_sock,
            },
        ))
    }

    /// Worker side: opens a channel from the host's descriptors, validating the
    /// memfd's seals, size, magic, version and geometry. `cfg` supplies limits and
    /// waiting behaviour; the ring sizes come from the header.
    pub fn open(fds: WorkerFds, cfg: ChannelConfig) -> Result<Channel, OpenError> {
        let shm = Arc::new(Shm::open(fds.ring)?);
        let mut cfg = cfg;
        let geo = shm.geometry();
        cfg.slot_count = geo.slot_count;
        cfg.slot_size = geo.slot_size;
        cfg.max_inline = geo.max_inline;
        let flags = {
            use std::os::unix::fs::FileExt;
            let io = |source| OpenError::Io {
                op: "read channel header flags",
                source,
            };
            let f = std::fs::File::from(sys::dup_cloexec(shm.fd()).map_err(io)?);
            let mut b = [0u8; 4];
            f.read_exact_at(&mut b, layout::OFF_FLAGS as u64)
                .map_err(io)?;
            u32::from_le_bytes(b)
        };
        if flags & !(layout::HEADER_FLAG_CUDA | layout::HEADER_FLAG_FROZEN_OUTPUTS) != 0 {
            return Err(OpenError::Header {
                field: "flags",
                value: u64::from(flags),
            });
        }
        cfg.cuda = flags & layout::HEADER_FLAG_CUDA != 0;
        cfg.frozen_outputs = flags & layout::HEADER_FLAG_FROZEN_OUTPUTS != 0;
        Ok(Channel::from_parts(Side::Worker, shm, fds.sock, cfg))
    }

    fn from_parts(side: Side, shm: Arc<Shm>, sock: OwnedFd, cfg: ChannelConfig) -> Channel {
        let (out, inp) = rings(side);
        let consumer = Consumer::new(shm.clone(), inp);
        let inbound_tail = consumer.local_tail();
        let inner = Inner {
            id: NEXT_CHANNEL_ID.fetch_add(1, Ordering::Relaxed),
            side,
            tx: Mutex::new(Tx {
                producer: Producer::new(shm.clone(), out),
                buf: Vec::with_capacity(256),
                next_slot: 1,
                spinner: Spinner::new(cfg.spin),
                outbox: VecDeque::new(),
                outbox_bytes: 0,
                last_progress: Instant::now(),
            }),
            rx: Mutex::new(Rx {
                consumer,
                buf: Vec::with_capacity(256),
                queue: VecDeque::new(),
                queued_bytes: 0,
                spinner: Spinner::new(cfg.spin),
            }),
            shm,
            sock,
            cfg,
            fds: Mutex::default(),
            exports: Mutex::default(),
            imports: Mutex::default(),
            pending: Mutex::default(),
            stash: Mutex::default(),
            next_id: AtomicU64::new(1),
            failed_flag: AtomicBool::new(false),
            failed: Mutex::new(None),
            peer_pidfd: Mutex::new(None),
            inbound_tail,
            queued: AtomicBool::new(false),
            control_pending: AtomicBool::new(false),
            outbox_pending: AtomicBool::new(false),
            reactor: Mutex::new(None),
        };
        Channel {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Process-unique id of this channel end (pools key arenas by it).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Which side this end is.
    pub fn side(&self) -> Side {
        self.inner.side
    }

    /// The ring sizes.
    pub fn geometry(&self) -> Geometry {
        self.inner.shm.geometry()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ChannelConfig {
        &self.inner.cfg
    }

    /// This end's socket (for polling; do not read or write it).
    pub fn socket_fd(&self) -> RawFd {
        self.inner.sock.as_raw_fd()
    }

    pub(crate) fn socket_borrowed(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.sock.as_fd()
    }

    /// A fresh call id for a call or callback this side originates.
    pub fn next_call_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Watches the peer's process: a pidfd (see also [`Channel::set_peer_pid`]).
    /// Blocking waits then notice its death, and the reactor polls it.
    pub fn set_peer_pidfd(&self, pidfd: OwnedFd) {
        *lock(&self.inner.peer_pidfd) = Some(Arc::new(pidfd));
    }

    /// Opens a pidfd for `pid` (the worker, or its launcher) and watches it.
    pub fn set_peer_pid(&self, pid: i32) -> Result<(), ChannelError> {
        let fd = sys::pidfd_open(pid).map_err(ioerr("pidfd_open"))?;
        self.set_peer_pidfd(fd);
        Ok(())
    }

    pub(crate) fn peer_pidfd(&self) -> Option<Arc<OwnedFd>> {
        lock(&self.inner.peer_pidfd).clone()
    }

    pub(crate) fn shm(&self) -> &Arc<Shm> {
        &self.inner.shm
    }

    pub(crate) fn inbound_ring(&self) -> usize {
        rings(self.inner.side).1
    }

    /// This end's consumer index of the inbound ring (slots consumed so far).
    pub(crate) fn inbound_consumed(&self) -> u64 {
        self.inner.inbound_tail.load(Ordering::Acquire)
    }

    /// Whether a receive would find something (ring data or buffered frames), as the
    /// reactor checks it: from this process's own copy of the consumer index.
    pub(crate) fn readable(&self) -> bool {
        let ring = self.inbound_ring();
        self.inner.queued.load(Ordering::Acquire)
            || self
                .inner
                .shm
                .ctl64(ring, layout::CTL_HEAD)
                .load(Ordering::Acquire)
                != self.inner.inbound_tail.load(Ordering::Acquire)
    }

    /// Publishes the CPU this thread runs on as this side's (`host_cpu` or
    /// `worker_cpu` in the header, see [`crate::layout`]) and says whether the peer
    /// last began to wait on the same CPU: then it can only run once we give that CPU
    /// up, so waiting for it should sleep at once rather than spin. A hint only: the
    /// peer writes its word, and a wrong value costs latency, nothing else.
    pub(crate) fn publish_cpu(&self) -> bool {
        let (mine, theirs) = match self.inner.side {
            Side::Host => (layout::OFF_HOST_CPU, layout::OFF_WORKER_CPU),
            Side::Worker => (layout::OFF_WORKER_CPU, layout::OFF_HOST_CPU),
        };
        let Some(v) = sys::current_cpu().and_then(|c| c.checked_add(1)) else {
            return false;
        };
        let shm = &self.inner.shm;
        let w = shm.header32(mine);
        if w.load(Ordering::Relaxed) != v {
            w.store(v, Ordering::Relaxed);
        }
        shm.header32(theirs).load(Ordering::Relaxed) == v
    }

    /// Before encoding a frame: wakes the peer's receiving thread if it sleeps and
    /// accepts early rings, unless both ends last waited on the same CPU (there the
    /// woken peer could only take the CPU from this sender).
    pub(crate) fn ring_early(&self) {
        let shm = &self.inner.shm;
        let host = shm.header32(layout::OFF_HOST_CPU).load(Ordering::Relaxed);
        let worker = shm.header32(layout::OFF_WORKER_CPU).load(Ordering::Relaxed);
        if host != 0 && host == worker {
            return;
        }
        shm.data_bell(self.outbound_ring()).ring_early();
    }

    /// Host: this thread is about to poll the channel itself (spinning for a reply), so
    /// the peer need not ring the doorbell: withdraws the sleeper's announcement (the
    /// reactor keeps waiting on the unchanged futex word). Pair with
    /// [`Channel::resume_doorbell`] when polling stops.
    pub fn quiet_doorbell(&self) {
        self.inner.shm.data_bell(self.inbound_ring()).cancel();
    }

    /// Host: re-announces the sleeper after [`Channel::quiet_doorbell`]. Returns true
    /// when frames arrived meanwhile: receive them (`try_recv`), then call again.
    pub fn resume_doorbell(&self) -> bool {
        let bell = self.inner.shm.data_bell(self.inbound_ring());
        bell.prepare();
        if self.readable() {
            bell.cancel();
            return true;
        }
        false
    }

    /// The error that poisoned the channel, if any.
    pub fn failure(&self) -> Option<ChannelError> {
        if !self.inner.failed_flag.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.inner.failed).clone()
    }

    fn check(&self) -> Result<(), ChannelError> {
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Poisons the channel with `err` (the first error wins) and returns it.
    fn fail(&self, err: ChannelError) -> ChannelError {
        let mut f = lock(&self.inner.failed);
        let e = f.get_or_insert(err).clone();
        self.inner.failed_flag.store(true, Ordering::Release);
        e
    }

    fn violation(&self, v: Violation) -> ChannelError {
        self.fail(ChannelError::Violation(v))
    }

    /// Closes this end: every later operation fails with `Closed` (unless it already
    /// failed), and the ids of calls still awaiting an answer are returned so the
    /// caller can fail them.
    ///
    /// Everything held for the peer goes at once, whoever still holds a clone of this
    /// channel: descriptors and mappings received from it, arenas shared with it,
    /// queued frames, its pidfd. (The ring memfd and the socket go with the last
    /// clone; received tensors keep only a [`WeakChannel`].)
    pub fn close(&self, reason: &str) -> Vec<u64> {
        self.fail(ChannelError::Closed {
            reason: reason.to_owned(),
        });
        // Storage is dropped after the locks are released (a CUDA unmap may block).
        let fds = std::mem::take(&mut *lock(&self.inner.fds));
        let exports = std::mem::take(&mut *lock(&self.inner.exports));
        let imports = std::mem::take(&mut *lock(&self.inner.imports));
        let outbox = {
            let mut tx = lock(&self.inner.tx);
            tx.outbox_bytes = 0;
            std::mem::take(&mut tx.outbox)
        };
        self.inner.outbox_pending.store(false, Ordering::Release);
        let queued = {
            let mut rx = lock(&self.inner.rx);
            rx.queued_bytes = 0;
            std::mem::take(&mut rx.queue)
        };
        self.inner.queued.store(false, Ordering::Release);
        let stash = std::mem::take(&mut *lock(&self.inner.stash));
        let pidfd = lock(&self.inner.peer_pidfd).take();
        drop((fds, exports, imports, outbox, queued, stash, pidfd));
        // The pool stops holding arenas for this peer (tensors over them keep theirs).
        crate::pool::ArenaPool::global().forget_channel(self.inner.id);
        self.take_pending()
    }

    /// A reference that does not keep the channel's resources alive (for received
    /// tensors, which only need it to give their descriptor back).
    pub fn downgrade(&self) -> WeakChannel {
        WeakChannel {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Calls this side sent that have no reply or error yet.
    pub fn pending_calls(&self) -> Vec<u64> {
        let mut v: Vec<u64> = lock(&self.inner.pending).iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Removes and returns every pending call id (after a failure, to fail them).
    pub fn take_pending(&self) -> Vec<u64> {
        let mut v: Vec<u64> = lock(&self.inner.pending).drain().collect();
        v.sort_unstable();
        v
    }

    /// Whether the peer is still there: its pidfd (if set) has not fired and its
    /// socket end is open. A dead peer poisons the channel with `PeerGone`.
    pub fn check_alive(&self) -> Result<(), ChannelError> {
        self.check()?;
        if let Some(p) = self.peer_pidfd() {
            let r = sys::poll_one(p.as_fd(), sys::POLLIN, 0).map_err(ioerr("poll pidfd"))?;
            if r != 0 {
                return Err(self.fail(ChannelError::PeerGone {
                    reason: "the peer process exited".into(),
                }));
            }
        }
        let r = sys::poll_one(self.inner.sock.as_fd(), sys::POLLRDHUP, 0)
            .map_err(ioerr("poll socket"))?;
        if r & (sys::POLLRDHUP | sys::POLLHUP | sys::POLLERR) != 0 {
            return Err(self.fail(ChannelError::PeerGone {
                reason: "the peer closed its socket".into(),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
