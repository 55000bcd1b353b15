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
//! # Locks
//! `tx` (producer) → `rx` (consumer) → `fds` → `exports` → `imports`: a thread may
//! take a later lock while holding an earlier one, never the reverse.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
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
    /// How long a send waits for ring or socket space.
    pub send_timeout: Duration,
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
            liveness_slice: Some(Duration::from_millis(100)),
            max_received_fds: 4096,
            max_queued_bytes: 512 << 20,
            cuda: false,
            max_cuda_fds: 256,
            max_cuda_bytes: 1 << 40,
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
}

impl Stored {
    fn len(&self) -> u64 {
        match self {
            Stored::Arena(a) => a.len() as u64,
            Stored::Device(d) => d.size(),
        }
    }

    fn is_device(&self) -> bool {
        matches!(self, Stored::Device(_))
    }
}

struct Export {
    stored: Stored,
    refs: u64,
}

/// The key of a device allocation in `Exports::by_device` (its address; stable while
/// the export holds it).
fn device_key(d: &Arc<dyn DeviceMemory>) -> usize {
    Arc::as_ptr(d) as *const () as usize
}

#[derive(Default)]
struct Exports {
    by_arena: HashMap<u64, u64>,
    by_device: HashMap<usize, u64>,
    slots: HashMap<u64, Export>,
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
    side: Side,
    shm: Arc<Shm>,
    sock: OwnedFd,
    cfg: ChannelConfig,
    tx: Mutex<Tx>,
    rx: Mutex<Rx>,
    fds: Mutex<FdTable>,
    exports: Mutex<Exports>,
    imports: Mutex<Imports>,
    pending: Mutex<HashSet<u64>>,
    stash: Mutex<HashMap<u64, Frame>>,
    next_id: AtomicU64,
    failed_flag: AtomicBool,
    failed: Mutex<Option<ChannelError>>,
    peer_pidfd: Mutex<Option<Arc<OwnedFd>>>,
    inbound_tail: Arc<AtomicU64>,
    queued: AtomicBool,
    /// Set when releases or retirements wait in `exports`/`imports` to be sent.
    control_pending: AtomicBool,
    pub(crate) reactor: Mutex<Option<ReactorLink>>,
}

/// One end of a channel. Cheap to clone (shared state); `Send + Sync`.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
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
        if cfg.cuda {
            sys::pwrite_all(
                shm.fd(),
                &layout::HEADER_FLAG_CUDA.to_le_bytes(),
                layout::OFF_FLAGS as u64,
            )
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
        if flags & !layout::HEADER_FLAG_CUDA != 0 {
            return Err(OpenError::Header {
                field: "flags",
                value: u64::from(flags),
            });
        }
        cfg.cuda = flags & layout::HEADER_FLAG_CUDA != 0;
        Ok(Channel::from_parts(Side::Worker, shm, fds.sock, cfg))
    }

    fn from_parts(side: Side, shm: Arc<Shm>, sock: OwnedFd, cfg: ChannelConfig) -> Channel {
        let (out, inp) = rings(side);
        let consumer = Consumer::new(shm.clone(), inp);
        let inbound_tail = consumer.local_tail();
        let inner = Inner {
            side,
            tx: Mutex::new(Tx {
                producer: Producer::new(shm.clone(), out),
                buf: Vec::with_capacity(256),
                next_slot: 1,
                spinner: Spinner::new(cfg.spin),
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
            reactor: Mutex::new(None),
        };
        Channel {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
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
    pub fn close(&self, reason: &str) -> Vec<u64> {
        self.fail(ChannelError::Closed {
            reason: reason.to_owned(),
        });
        self.take_pending()
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

    // ------------------------------------------------------------------ sending

    /// Sends one frame. Waits (spin, then futex) up to `send_timeout` for ring space,
    /// buffering incoming frames meanwhile so two full rings cannot deadlock. Frames
    /// larger than `max_inline` spill into a sealed memfd. A call frame registers its
    /// id as pending.
    pub fn send(&self, frame: &Frame) -> Result<(), ChannelError> {
        self.check()?;
        if let Frame::Release(r) = frame {
            if !r.tensors.is_empty() || !r.retired.is_empty() {
                return Err(ChannelError::Misuse {
                    what: "tensor releases and retirements are sent by the channel itself (use release())".into(),
                });
            }
        }
        let mut tx = lock(&self.inner.tx);
        self.flush_control_locked(&mut tx, true)?;
        let mut buf = std::mem::take(&mut tx.buf);
        buf.clear();
        let res = frame
            .encode(&mut buf, &self.inner.cfg.limits)
            .map_err(ChannelError::Encode);
        let res = res.and_then(|()| self.count_outgoing_tensors(frame));
        if let Err(e) = res {
            tx.buf = buf;
            return Err(e);
        }
        if let Frame::Call(c) = frame {
            lock(&self.inner.pending).insert(c.id);
        }
        let r = self.push_locked(&mut tx, &buf, true);
        tx.buf = buf;
        if r.is_err() {
            if let Frame::Call(c) = frame {
                lock(&self.inner.pending).remove(&c.id);
            }
        }
        r
    }

    /// Sends a call and registers it as pending; returns its id.
    pub fn send_call(
        &self,
        target: u64,
        method: &str,
        args: Vec<Value>,
        kwargs: Vec<(String, Value)>,
    ) -> Result<u64, ChannelError> {
        let id = self.next_call_id();
        self.send(&Frame::Call(Call {
            id,
            parent: None,
            target,
            method: method.to_owned(),
            args,
            kwargs,
            deadline_ns: 0,
        }))?;
        Ok(id)
    }

    /// Sends a reply to the peer's call `id`.
    pub fn reply(&self, id: u64, value: Value) -> Result<(), ChannelError> {
        self.send(&Frame::Reply { id, value })
    }

    /// Sends an error answer to the peer's call `id`.
    pub fn reply_error(&self, id: u64, error: ErrorValue) -> Result<(), ChannelError> {
        self.send(&Frame::Error { id, error })
    }

    /// Adds one reference per sender-owned descriptor in an outgoing frame; each must
    /// name an arena shared with [`Channel::share`] and fit inside it.
    fn count_outgoing_tensors(&self, frame: &Frame) -> Result<(), ChannelError> {
        let mut descs: Vec<&TensorDesc> = Vec::new();
        frame.for_each_tensor(&mut |d| {
            if d.origin == Origin::Sender {
                descs.push(d)
            }
        });
        if descs.is_empty() {
            return Ok(());
        }
        let mut ex = lock(&self.inner.exports);
        for d in &descs {
            let e = ex.slots.get(&d.slot).ok_or_else(|| ChannelError::Misuse {
                what: format!("tensor names arena slot {} which is not shared", d.slot),
            })?;
            if e.stored.is_device() != d.device.is_cuda() {
                return Err(ChannelError::Misuse {
                    what: format!(
                        "tensor device {:?} does not match the memory of slot {}",
                        d.device, d.slot
                    ),
                });
            }
            d.validate_in(e.stored.len())
                .map_err(|e| ChannelError::Misuse {
                    what: e.to_string(),
                })?;
            if let Stored::Arena(a) = &e.stored {
                if d.writable && a.state() != ArenaState::Output {
                    return Err(ChannelError::Misuse {
                        what: format!("slot {} is not an output buffer", d.slot),
                    });
                }
            }
        }
        for d in descs {
            if let Some(e) = ex.slots.get_mut(&d.slot) {
                e.refs += 1;
            }
        }
        Ok(())
    }

    /// Pushes encoded frame bytes (inline or spilled).
    fn push_locked(&self, tx: &mut Tx, bytes: &[u8], block: bool) -> Result<(), ChannelError> {
        let geo = self.inner.shm.geometry();
        if bytes.len() <= geo.max_inline as usize {
            return self.push_record(tx, layout::RECORD_INLINE, bytes, block);
        }
        // Spill: a sealed, immutable memfd sent before the record that names it.
        let fd = sys::memfd_create("nodecell-spill").map_err(ioerr("memfd_create spill"))?;
        sys::ftruncate(fd.as_fd(), bytes.len() as u64).map_err(ioerr("ftruncate spill"))?;
        sys::pwrite_all(fd.as_fd(), bytes, 0).map_err(ioerr("write spill"))?;
        sys::add_seals(
            fd.as_fd(),
            sys::SEAL_WRITE | sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL,
        )
        .map_err(ioerr("seal spill"))?;
        let slot = tx.next_slot;
        tx.next_slot += 1;
        self.send_fd(slot, layout::FD_KIND_SPILL, 0, &fd)?;
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&slot.to_le_bytes());
        rec[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.push_record(tx, layout::RECORD_SPILL, &rec, block)
    }

    fn push_record(
        &self,
        tx: &mut Tx,
        kind: u16,
        bytes: &[u8],
        block: bool,
    ) -> Result<(), ChannelError> {
        let first = tx
            .producer
            .try_push(kind, &[bytes])
            .map_err(|v| self.violation(v))?;
        if first == Push::Done {
            return Ok(());
        }
        if !block {
            return Err(ChannelError::Timeout {
                op: "send (ring full)",
            });
        }
        let deadline = Instant::now() + self.inner.cfg.send_timeout;
        let shm = self.inner.shm.clone();
        let ring = tx.producer.ring();
        let need = shm.geometry().slots_for(bytes.len());
        let Tx {
            producer, spinner, ..
        } = tx;
        let woke = spinner.wait(
            shm.space_bell(ring),
            Some(deadline),
            self.inner
                .cfg
                .liveness_slice
                .or(Some(Duration::from_millis(50))),
            || {
                // Keep reading while we wait, so a peer blocked on its own full ring progresses.
                self.drain_into_queue()?;
                Ok(producer.free_slots().map_err(|v| self.violation(v))? >= need)
            },
            || self.check_alive(),
        )?;
        if woke == Wake::TimedOut {
            return Err(ChannelError::Timeout {
                op: "send (ring full)",
            });
        }
        match producer
            .try_push(kind, &[bytes])
            .map_err(|v| self.violation(v))?
        {
            Push::Done => Ok(()),
            Push::Full => Err(ChannelError::Timeout {
                op: "send (ring full)",
            }),
        }
    }

    /// Sends one fd; `extra` fills the entry's 7 extra bytes (0 for all but CUDA).
    fn send_fd(&self, slot: u64, kind: u8, extra: u64, fd: &OwnedFd) -> Result<(), ChannelError> {
        let mut msg = Vec::with_capacity(8 + layout::FD_ENTRY_SIZE);
        msg.extend_from_slice(&layout::FD_MSG_MAGIC.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&slot.to_le_bytes());
        msg.push(kind);
        msg.extend_from_slice(&extra.to_le_bytes()[..7]);
        let deadline = Instant::now() + self.inner.cfg.send_timeout;
        loop {
            match sys::send_fds(self.inner.sock.as_fd(), &msg, &[fd.as_fd()]) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ChannelError::Timeout {
                            op: "send fd (socket full)",
                        });
                    }
                    self.check_alive()?;
                    let ms = left.as_millis().clamp(1, 50) as i32;
                    sys::poll_one(self.inner.sock.as_fd(), sys::POLLOUT, ms)
                        .map_err(ioerr("poll socket"))?;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::BrokenPipe
                        || e.raw_os_error() == Some(104) =>
                {
                    return Err(self.fail(ChannelError::PeerGone {
                        reason: "the peer closed its socket".into(),
                    }));
                }
                Err(e) => return Err(ioerr("sendmsg SCM_RIGHTS")(e)),
            }
        }
    }

    /// Sends queued releases and retirements now (if the ring has room).
    pub fn flush(&self) -> Result<(), ChannelError> {
        self.check()?;
        let mut tx = lock(&self.inner.tx);
        self.flush_control_locked(&mut tx, false)
    }

    fn flush_control_locked(&self, tx: &mut Tx, block: bool) -> Result<(), ChannelError> {
        if !self.inner.control_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let retired = std::mem::take(&mut lock(&self.inner.exports).retire);
        let tensors = std::mem::take(&mut lock(&self.inner.imports).release);
        if retired.is_empty() && tensors.is_empty() {
            return Ok(());
        }
        let f = Frame::Release(Release {
            handles: Vec::new(),
            tensors,
            retired,
        });
        let mut buf = Vec::new();
        f.encode(&mut buf, &self.inner.cfg.limits)
            .map_err(ChannelError::Encode)?;
        match self.push_locked(tx, &buf, block) {
            Ok(()) => Ok(()),
            Err(ChannelError::Timeout { .. }) if !block => {
                // Put them back for the next flush.
                if let Frame::Release(r) = f {
                    lock(&self.inner.exports).retire.extend(r.retired);
                    lock(&self.inner.imports).release.extend(r.tensors);
                }
                self.inner.control_pending.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------------ arenas

    /// Makes `arena` available to the peer: sends its fd over the socket the first
    /// time (once per arena and peer while it stays shared) and returns the slot id
    /// that tensor descriptors name. The host may share read-only, output or frozen
    /// arenas; a worker only frozen ones. The arena stays shared while descriptors
    /// naming it are outstanding (each descriptor sent in a frame is one reference,
    /// given back by the peer's release); then it is retired.
    pub fn share(&self, arena: &Arc<Arena>) -> Result<u64, ChannelError> {
        self.check()?;
        let state = arena.state();
        let kind = match (self.inner.side, state) {
            (_, ArenaState::Open) => {
                return Err(ChannelError::Misuse {
                    what: format!("arena {} is not sealed", arena.id()),
                })
            }
            (Side::Host, ArenaState::ReadOnly) | (_, ArenaState::Frozen) => layout::FD_KIND_ARENA,
            (Side::Host, ArenaState::Output) => layout::FD_KIND_OUTPUT,
            (Side::Worker, s) => {
                return Err(ChannelError::Misuse {
                    what: format!("a worker can only share frozen arenas, not {s:?}"),
                })
            }
        };
        let mut tx = lock(&self.inner.tx);
        if let Some(slot) = lock(&self.inner.exports).by_arena.get(&arena.id()) {
            return Ok(*slot);
        }
        let slot = tx.next_slot;
        tx.next_slot += 1;
        let fd = sys::dup_cloexec(arena.fd()).map_err(ioerr("dup arena"))?;
        self.send_fd(slot, kind, 0, &fd)?;
        let mut ex = lock(&self.inner.exports);
        ex.by_arena.insert(arena.id(), slot);
        ex.slots.insert(
            slot,
            Export {
                stored: Stored::Arena(arena.clone()),
                refs: 0,
            },
        );
        Ok(slot)
    }

    /// Makes CUDA memory available to the peer, like [`Channel::share`] for an arena:
    /// sends a freshly exported fd with its size the first time (once per allocation
    /// and peer while it stays shared) and returns the slot id descriptors name. The
    /// allocation stays referenced while descriptors naming it are outstanding.
    /// Refused (`Misuse`) on a channel without `cuda`.
    pub fn share_device(&self, mem: &Arc<dyn DeviceMemory>) -> Result<u64, ChannelError> {
        self.check()?;
        if !self.inner.cfg.cuda {
            return Err(ChannelError::Misuse {
                what: "CUDA memory cannot cross this channel: the extension was not loaded with share_cuda_ipc=True".into(),
            });
        }
        if !mem.device().is_cuda() {
            return Err(ChannelError::Misuse {
                what: format!("device memory on {:?} is not CUDA memory", mem.device()),
            });
        }
        let size = mem.size();
        if size == 0
            || !size.is_multiple_of(4096)
            || size > self.inner.cfg.max_cuda_bytes.min(layout::FD_EXTRA_MAX)
        {
            return Err(ChannelError::Misuse {
                what: format!("a CUDA allocation of {size} bytes cannot be shared (non-zero multiple of 4096, at most {})", self.inner.cfg.max_cuda_bytes),
            });
        }
        let mut tx = lock(&self.inner.tx);
        if let Some(slot) = lock(&self.inner.exports).by_device.get(&device_key(mem)) {
            return Ok(*slot);
        }
        let fd = mem.export_fd().map_err(ioerr("export CUDA allocation"))?;
        let slot = tx.next_slot;
        tx.next_slot += 1;
        self.send_fd(slot, layout::FD_KIND_CUDA, size, &fd)?;
        let mut ex = lock(&self.inner.exports);
        ex.by_device.insert(device_key(mem), slot);
        ex.slots.insert(
            slot,
            Export {
                stored: Stored::Device(mem.clone()),
                refs: 0,
            },
        );
        Ok(slot)
    }

    /// Shares `mem` and builds a descriptor (device cuda, writable) for a tensor in it
    /// (`strides` in elements; None = C-contiguous), validated against its size.
    pub fn share_device_tensor(
        &self,
        mem: &Arc<dyn DeviceMemory>,
        offset: u64,
        dtype: crate::frame::DType,
        shape: &[u64],
        strides: Option<&[i64]>,
    ) -> Result<TensorDesc, ChannelError> {
        let slot = self.share_device(mem)?;
        let bad = |e: crate::frame::TensorError| ChannelError::Misuse {
            what: e.to_string(),
        };
        let d = desc_for(slot, offset, dtype, shape, strides)
            .map_err(bad)?
            .on_device(mem.device());
        d.validate_in(mem.size()).map_err(bad)?;
        Ok(d)
    }

    /// The device memory this side shared as `slot` (while the peer may name it).
    pub fn exported_device(&self, slot: u64) -> Option<Arc<dyn DeviceMemory>> {
        match lock(&self.inner.exports)
            .slots
            .get(&slot)
            .map(|e| &e.stored)
        {
            Some(Stored::Device(d)) => Some(d.clone()),
            _ => None,
        }
    }

    /// For a received cuda descriptor naming the peer's allocation: the fd (a dup) and
    /// announced size to import it with, or what was attached to the slot already.
    /// The descriptor is checked against the slot (kind, size) first.
    pub fn device_slot(&self, desc: &TensorDesc) -> Result<DeviceSlot, ChannelError> {
        self.check()?;
        let misuse = |what: String| ChannelError::Misuse { what };
        if desc.origin != Origin::Sender || !desc.device.is_cuda() {
            return Err(misuse(
                "device_slot takes a cuda descriptor naming the peer's memory".into(),
            ));
        }
        let fds = lock(&self.inner.fds);
        let inc = fds
            .slots
            .get(&desc.slot)
            .ok_or_else(|| misuse(format!("CUDA slot {} is unknown or retired", desc.slot)))?;
        if inc.kind != layout::FD_KIND_CUDA {
            return Err(misuse(format!("slot {} is not CUDA memory", desc.slot)));
        }
        desc.validate_in(inc.size)
            .map_err(|e| misuse(e.to_string()))?;
        if let Some(a) = &inc.attached {
            return Ok(DeviceSlot {
                fd: None,
                size: inc.size,
                attached: Some(a.clone()),
            });
        }
        let fd = sys::dup_cloexec(inc.fd.as_fd()).map_err(ioerr("dup CUDA handle"))?;
        Ok(DeviceSlot {
            fd: Some(fd),
            size: inc.size,
            attached: None,
        })
    }

    /// Stores what the importer made of CUDA slot `slot` (kept until the peer retires
    /// the slot), unless something is there already; returns what is stored.
    /// (If something is there already, `obj` is dropped after the lock is released:
    /// dropping an import may unmap device memory, which can block.)
    pub fn attach_device(
        &self,
        slot: u64,
        obj: Arc<dyn Any + Send + Sync>,
    ) -> Arc<dyn Any + Send + Sync> {
        let mut fds = lock(&self.inner.fds);
        let inc = match fds.slots.get_mut(&slot) {
            Some(inc) if inc.kind == layout::FD_KIND_CUDA => inc,
            _ => return obj,
        };
        if let Some(there) = inc.attached.clone() {
            drop(fds);
            drop(obj);
            return there;
        }
        inc.attached = Some(obj.clone());
        obj
    }

    /// Shares `arena` and builds a descriptor for a tensor in it (`strides` in
    /// elements; None = C-contiguous), validated against the arena's size.
    pub fn share_tensor(
        &self,
        arena: &Arc<Arena>,
        offset: u64,
        dtype: crate::frame::DType,
        shape: &[u64],
        strides: Option<&[i64]>,
    ) -> Result<TensorDesc, ChannelError> {
        let slot = self.share(arena)?;
        let bad = |e: crate::frame::TensorError| ChannelError::Misuse {
            what: e.to_string(),
        };
        let mut d = desc_for(slot, offset, dtype, shape, strides).map_err(bad)?;
        d.writable = arena.state() == ArenaState::Output;
        d.validate_in(arena.len() as u64).map_err(bad)?;
        Ok(d)
    }

    /// How many descriptors naming `arena` the peer still holds (None: not shared).
    pub fn shared_refs(&self, arena: &Arena) -> Option<u64> {
        let ex = lock(&self.inner.exports);
        ex.by_arena
            .get(&arena.id())
            .and_then(|s| ex.slots.get(s))
            .map(|e| e.refs)
    }

    /// How many descriptors naming `mem` the peer still holds (None: not shared).
    pub fn shared_device_refs(&self, mem: &Arc<dyn DeviceMemory>) -> Option<u64> {
        let ex = lock(&self.inner.exports);
        ex.by_device
            .get(&device_key(mem))
            .and_then(|s| ex.slots.get(s))
            .map(|e| e.refs)
    }

    /// Maps the storage a received descriptor names and returns a view of it: the
    /// peer's arena read-only (writable-shared for output buffers), or this side's
    /// own arena when the descriptor echoes it back. Mappings are cached per arena.
    pub fn import(&self, desc: &TensorDesc) -> Result<TensorView, ChannelError> {
        self.import_as(desc, None)
    }

    /// Like [`Channel::import`] but with a private copy-on-write mapping: writes
    /// through the view stay in this process.
    pub fn import_cow(&self, desc: &TensorDesc) -> Result<TensorView, ChannelError> {
        self.import_as(desc, Some(Protection::CopyOnWrite))
    }

    fn import_as(
        &self,
        desc: &TensorDesc,
        prot: Option<Protection>,
    ) -> Result<TensorView, ChannelError> {
        self.check()?;
        let misuse = |what: String| ChannelError::Misuse { what };
        if desc.device.is_cuda() {
            return Err(misuse(
                "a cuda descriptor is not host memory: use device_slot / exported_device".into(),
            ));
        }
        match desc.origin {
            Origin::Receiver => {
                let ex = lock(&self.inner.exports);
                let e = ex
                    .slots
                    .get(&desc.slot)
                    .ok_or_else(|| misuse(format!("arena slot {} is not shared", desc.slot)))?;
                let Stored::Arena(arena) = &e.stored else {
                    return Err(misuse(format!("slot {} is not an arena", desc.slot)));
                };
                desc.validate_in(arena.len() as u64)
                    .map_err(|e| misuse(e.to_string()))?;
                let map = match prot {
                    Some(p) => Arc::new(
                        Mapping::map(arena.fd(), arena.len(), p).map_err(ioerr("mmap arena"))?,
                    ),
                    None => arena
                        .mapping()
                        .ok_or_else(|| misuse("arena has no mapping".into()))?,
                };
                Ok(TensorView::new(map, desc.clone()))
            }
            Origin::Sender => {
                let mut fds = lock(&self.inner.fds);
                let inc = fds.slots.get_mut(&desc.slot).ok_or_else(|| {
                    misuse(format!("arena slot {} is unknown or retired", desc.slot))
                })?;
                if inc.kind == layout::FD_KIND_CUDA {
                    return Err(misuse(format!("slot {} is CUDA memory", desc.slot)));
                }
                desc.validate_in(inc.size)
                    .map_err(|e| misuse(e.to_string()))?;
                if let Some(p) = prot {
                    // Reuse the slot's copy-on-write mapping when no view holds it any more:
                    // dropping its private pages makes it a fresh view of the arena.
                    if p == Protection::CopyOnWrite {
                        if let Some(m) = inc.cow.iter().find(|m| Arc::strong_count(m) == 1) {
                            if m.discard_private().is_ok() {
                                return Ok(TensorView::new(m.clone(), desc.clone()));
                            }
                        }
                    }
                    let m = Arc::new(
                        Mapping::map(inc.fd.as_fd(), inc.size as usize, p)
                            .map_err(ioerr("mmap arena copy-on-write"))?,
                    );
                    if p == Protection::CopyOnWrite && inc.cow.len() < COW_CACHE {
                        inc.cow.push(m.clone());
                    }
                    return Ok(TensorView::new(m, desc.clone()));
                }
                if inc.map.is_none() {
                    let p = if inc.kind == layout::FD_KIND_OUTPUT {
                        Protection::WriteShared
                    } else {
                        Protection::ReadShared
                    };
                    let m = Mapping::map(inc.fd.as_fd(), inc.size as usize, p)
                        .map_err(ioerr("mmap received arena"))?;
                    inc.map = Some(Arc::new(m));
                }
                let map = inc
                    .map
                    .clone()
                    .ok_or_else(|| misuse("mapping vanished".into()))?;
                Ok(TensorView::new(map, desc.clone()))
            }
        }
    }

    /// Gives back one reference to a descriptor received from the peer (call once
    /// per descriptor received, when done with it — and after sending any frame that
    /// echoes it back, since the owner may retire the arena once all are released). The release travels with the
    /// next frame or [`Channel::flush`]; this tries to send it at once.
    pub fn release(&self, desc: &TensorDesc) -> Result<(), ChannelError> {
        self.release_queued(desc)?;
        if self.check().is_err() {
            return Ok(());
        }
        if let Ok(mut tx) = self.inner.tx.try_lock() {
            self.flush_control_locked(&mut tx, false)?;
        }
        Ok(())
    }

    /// Like [`Channel::release`], but only queues the release: it travels with the
    /// next frame this side sends (or [`Channel::flush`]). Saves the peer a wake-up
    /// per tensor when replies follow closely anyway.
    pub fn release_lazy(&self, desc: &TensorDesc) -> Result<(), ChannelError> {
        self.release_queued(desc)
    }

    fn release_queued(&self, desc: &TensorDesc) -> Result<(), ChannelError> {
        if desc.origin != Origin::Sender {
            return Ok(());
        }
        {
            let mut im = lock(&self.inner.imports);
            match im.held.get_mut(&desc.slot) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    if *n == 0 {
                        im.held.remove(&desc.slot);
                    }
                }
                _ => {
                    return Err(ChannelError::Misuse {
                        what: format!("no reference held on arena slot {}", desc.slot),
                    })
                }
            }
            if let Some(e) = im.release.iter_mut().find(|(s, _)| *s == desc.slot) {
                e.1 += 1;
            } else {
                im.release.push((desc.slot, 1));
            }
        }
        self.inner.control_pending.store(true, Ordering::Release);
        Ok(())
    }

    /// Descriptors received and not yet released, per peer arena slot.
    pub fn held_tensors(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = lock(&self.inner.imports)
            .held
            .iter()
            .map(|(a, b)| (*a, *b))
            .collect();
        v.sort_unstable();
        v
    }

    // ------------------------------------------------------------------ receiving

    /// Returns the next frame if one is ready, without blocking. `Ok(None)` when the
    /// ring is empty — which also re-arms this channel in its reactor.
    pub fn try_recv(&self) -> Result<Option<Frame>, ChannelError> {
        self.check()?;
        let mut rx = lock(&self.inner.rx);
        let r = self.try_recv_locked(&mut rx);
        drop(rx);
        if let Ok(None) = r {
            self.rearm_reactor();
        }
        r
    }

    fn rearm_reactor(&self) {
        let link = lock(&self.inner.reactor);
        if let Some(l) = link.as_ref() {
            if let Some(r) = l.reactor.upgrade() {
                r.rearm(l.token);
            }
        }
    }

    fn try_recv_locked(&self, rx: &mut Rx) -> Result<Option<Frame>, ChannelError> {
        if let Some((f, n)) = rx.queue.pop_front() {
            rx.queued_bytes -= n;
            if rx.queue.is_empty() {
                self.inner.queued.store(false, Ordering::Release);
            }
            return Ok(Some(f));
        }
        loop {
            match self.pop_frame(rx)? {
                None => return Ok(None),
                Some((Some(f), _)) => return Ok(Some(f)),
                Some((None, _)) => continue, // internal frame (release bookkeeping)
            }
        }
    }

    /// While a send waits for space: moves incoming frames into the queue.
    fn drain_into_queue(&self) -> Result<(), ChannelError> {
        let Ok(mut rx) = self.inner.rx.try_lock() else {
            return Ok(());
        };
        while let Some((f, n)) = self.pop_frame(&mut rx)? {
            if let Some(f) = f {
                rx.queued_bytes += n;
                if rx.queued_bytes > self.inner.cfg.max_queued_bytes {
                    return Err(self.violation(Violation::Flood {
                        bytes: rx.queued_bytes as u64,
                        limit: self.inner.cfg.max_queued_bytes as u64,
                    }));
                }
                rx.queue.push_back((f, n));
                self.inner.queued.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Pops and decodes one record. `Some((None, _))`: a frame the channel consumed itself.
    fn pop_frame(&self, rx: &mut Rx) -> Result<Option<(Option<Frame>, usize)>, ChannelError> {
        let mut buf = std::mem::take(&mut rx.buf);
        let rec = rx.consumer.try_pop(&mut buf);
        let out = match rec {
            Err(v) => Err(self.violation(v)),
            Ok(None) => Ok(None),
            Ok(Some(Record::Inline)) => {
                let d = Frame::decode(&buf, &self.inner.cfg.limits)
                    .map_err(|e| self.violation(Violation::Decode(e)));
                d.and_then(|d| self.accept(d)).map(|f| Some((f, buf.len())))
            }
            Ok(Some(Record::Spill { slot, len })) => {
                self.read_spill(slot, len).map(|(f, n)| Some((f, n)))
            }
        };
        rx.buf = buf;
        if rx.buf.capacity() > (1 << 20) {
            rx.buf = Vec::with_capacity(256);
        }
        out
    }

    fn read_spill(&self, slot: u64, len: u64) -> Result<(Option<Frame>, usize), ChannelError> {
        let limit = self.inner.cfg.limits.max_frame as u64;
        if len > limit || len == 0 {
            return Err(self.violation(Violation::RecordLength { len, limit }));
        }
        let inc = {
            let mut fds = lock(&self.inner.fds);
            if !fds.slots.contains_key(&slot) {
                self.drain_socket(&mut fds)?;
            }
            match fds.remove(&slot) {
                Some(i) if i.kind == layout::FD_KIND_SPILL => i,
                Some(i) => return Err(self.violation(Violation::SlotKind { slot, kind: i.kind })),
                None => return Err(self.violation(Violation::UnknownSlot { slot })),
            }
        };
        if inc.size < len {
            return Err(self.violation(Violation::ArenaSize {
                slot,
                size: inc.size,
                need: len,
            }));
        }
        let map = Mapping::map(inc.fd.as_fd(), len as usize, Protection::ReadShared)
            .map_err(ioerr("mmap spill"))?;
        // SAFETY: the spill memfd was checked at receipt to carry F_SEAL_WRITE, so no
        // process can change these bytes while we decode them (no TOCTOU), and
        // F_SEAL_SHRINK with size >= len keeps every mapped page backed (no SIGBUS).
        let bytes = unsafe { map.as_slice() };
        let d = Frame::decode(bytes, &self.inner.cfg.limits)
            .map_err(|e| self.violation(Violation::Decode(e)))?;
        let f = self.accept(d)?;
        Ok((f, len as usize))
    }

    /// Post-decode checks and bookkeeping for one received frame.
    fn accept(&self, d: Decoded) -> Result<Option<Frame>, ChannelError> {
        let Decoded { frame, tensors } = d;
        if tensors > 0 {
            self.check_incoming_tensors(&frame)?;
        }
        match frame {
            Frame::Release(mut r) => {
                self.apply_release(&r)?;
                if r.handles.is_empty() {
                    return Ok(None);
                }
                r.tensors.clear();
                r.retired.clear();
                Ok(Some(Frame::Release(r)))
            }
            Frame::Reply { id, .. } | Frame::Error { id, .. } => {
                lock(&self.inner.pending).remove(&id);
                Ok(Some(frame))
            }
            f => Ok(Some(f)),
        }
    }

    fn check_incoming_tensors(&self, frame: &Frame) -> Result<(), ChannelError> {
        let mut descs: Vec<&TensorDesc> = Vec::new();
        frame.for_each_tensor(&mut |d| descs.push(d));
        let mut fds = lock(&self.inner.fds);
        let mut new_held: Vec<u64> = Vec::new();
        for d in &descs {
            match d.origin {
                Origin::Sender => {
                    if !fds.slots.contains_key(&d.slot) {
                        self.drain_socket(&mut fds)?;
                    }
                    let inc = match fds.slots.get(&d.slot) {
                        Some(i) => i,
                        None => return Err(self.violation(Violation::UnknownSlot { slot: d.slot })),
                    };
                    if inc.kind == layout::FD_KIND_SPILL
                        || (inc.kind == layout::FD_KIND_CUDA) != d.device.is_cuda()
                    {
                        return Err(self.violation(Violation::SlotKind {
                            slot: d.slot,
                            kind: inc.kind,
                        }));
                    }
                    if d.writable
                        && inc.kind != layout::FD_KIND_OUTPUT
                        && inc.kind != layout::FD_KIND_CUDA
                    {
                        return Err(self.violation(Violation::SlotKind {
                            slot: d.slot,
                            kind: inc.kind,
                        }));
                    }
                    if let Err(e) = d.validate_in(inc.size) {
                        return Err(self.violation(Violation::Tensor(e)));
                    }
                    new_held.push(d.slot);
                }
                Origin::Receiver => {
                    let ex = lock(&self.inner.exports);
                    let Some(e) = ex.slots.get(&d.slot) else {
                        drop(ex);
                        return Err(self.violation(Violation::UnknownSlot { slot: d.slot }));
                    };
                    if e.stored.is_device() != d.device.is_cuda() {
                        let kind = if e.stored.is_device() {
                            layout::FD_KIND_CUDA
                        } else {
                            layout::FD_KIND_ARENA
                        };
                        drop(ex);
                        return Err(self.violation(Violation::SlotKind { slot: d.slot, kind }));
                    }
                    if let Err(err) = d.validate_in(e.stored.len()) {
                        drop(ex);
                        return Err(self.violation(Violation::Tensor(err)));
                    }
                }
            }
        }
        drop(fds);
        if !new_held.is_empty() {
            let mut im = lock(&self.inner.imports);
            for s in new_held {
                *im.held.entry(s).or_insert(0) += 1;
            }
        }
        Ok(())
    }

    fn apply_release(&self, r: &Release) -> Result<(), ChannelError> {
        // Storage let go of here is dropped after the locks (a CUDA unmap may block).
        let mut gone_exports: Vec<Export> = Vec::new();
        let mut gone_imports: Vec<Incoming> = Vec::new();
        if !r.tensors.is_empty() {
            let mut ex = lock(&self.inner.exports);
            for &(slot, count) in &r.tensors {
                let held = ex.slots.get(&slot).map(|e| e.refs);
                match held {
                    Some(h) if count <= h && count > 0 => {
                        let e = ex.slots.get_mut(&slot).expect("present");
                        e.refs -= count;
                        if e.refs == 0 {
                            if let Some(e) = ex.slots.remove(&slot) {
                                match &e.stored {
                                    Stored::Arena(a) => ex.by_arena.remove(&a.id()),
                                    Stored::Device(d) => ex.by_device.remove(&device_key(d)),
                                };
                                gone_exports.push(e);
                            }
                            ex.retire.push(slot);
                            self.inner.control_pending.store(true, Ordering::Release);
                        }
                    }
                    _ => {
                        drop(ex);
                        return Err(self.violation(Violation::Release {
                            slot,
                            count,
                            held: held.unwrap_or(0),
                        }));
                    }
                }
            }
        }
        if !r.retired.is_empty() {
            let mut fds = lock(&self.inner.fds);
            for slot in &r.retired {
                let inc = match fds.remove(slot) {
                    Some(inc) => inc,
                    None => {
                        // It may still be on its way over the socket.
                        self.drain_socket(&mut fds)?;
                        match fds.remove(slot) {
                            Some(inc) => inc,
                            None => {
                                drop(fds);
                                return Err(self.violation(Violation::UnknownSlot { slot: *slot }));
                            }
                        }
                    }
                };
                gone_imports.push(inc);
            }
            drop(fds);
            let mut im = lock(&self.inner.imports);
            for slot in &r.retired {
                im.held.remove(slot);
            }
        }
        drop(gone_exports);
        drop(gone_imports);
        Ok(())
    }

    /// Reads every queued fd message from the socket into the table, validating each
    /// descriptor (kind, memfd, seals, size) before it is kept.
    fn drain_socket(&self, fds: &mut FdTable) -> Result<(), ChannelError> {
        let mut buf = [0u8; 8 + layout::FD_ENTRY_SIZE * layout::MAX_FDS_PER_MSG + 1];
        loop {
            let m = sys::recv_fds(self.inner.sock.as_fd(), &mut buf, layout::MAX_FDS_PER_MSG)
                .map_err(ioerr("recvmsg"))?;
            let Some(m) = m else { return Ok(()) };
            if m.len == 0 && m.fds.is_empty() {
                return Ok(()); // the peer closed; liveness checks report it
            }
            if m.ctrunc {
                return Err(self.violation(Violation::FdMessage {
                    reason: "more descriptors than allowed in one message (MSG_CTRUNC)",
                }));
            }
            if m.trunc || m.len > 8 + layout::FD_ENTRY_SIZE * layout::MAX_FDS_PER_MSG {
                return Err(self.violation(Violation::FdMessage {
                    reason: "message too long",
                }));
            }
            let d = &buf[..m.len];
            if d.len() < 8 || u32::from_le_bytes([d[0], d[1], d[2], d[3]]) != layout::FD_MSG_MAGIC {
                return Err(self.violation(Violation::FdMessage {
                    reason: "bad magic",
                }));
            }
            let count = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize;
            if count == 0 || count != m.fds.len() || d.len() != 8 + count * layout::FD_ENTRY_SIZE {
                return Err(self.violation(Violation::FdMessage {
                    reason: "descriptor count does not match the message",
                }));
            }
            if fds.slots.len() + count > self.inner.cfg.max_received_fds {
                return Err(self.violation(Violation::TooManyFds {
                    limit: self.inner.cfg.max_received_fds,
                }));
            }
            for (i, fd) in m.fds.into_iter().enumerate() {
                let e = &d[8 + i * layout::FD_ENTRY_SIZE..8 + (i + 1) * layout::FD_ENTRY_SIZE];
                let mut a = [0u8; 8];
                a.copy_from_slice(&e[..8]);
                let slot = u64::from_le_bytes(a);
                let kind = e[8];
                let mut x = [0u8; 8];
                x[..7].copy_from_slice(&e[9..]);
                let extra = u64::from_le_bytes(x);
                if extra != 0 && kind != layout::FD_KIND_CUDA {
                    return Err(self.violation(Violation::FdMessage {
                        reason: "reserved bytes not zero",
                    }));
                }
                if kind == layout::FD_KIND_CUDA && fds.cuda >= self.inner.cfg.max_cuda_fds {
                    return Err(self.violation(Violation::TooManyFds {
                        limit: self.inner.cfg.max_cuda_fds,
                    }));
                }
                let inc = self.validate_fd(slot, kind, extra, fd)?;
                if fds.slots.contains_key(&slot) {
                    return Err(self.violation(Violation::DuplicateSlot { slot }));
                }
                fds.insert(slot, inc);
            }
        }
    }

    /// A received CUDA allocation: allowed on this channel, an NVIDIA driver file, and
    /// a bounded size (`extra`). No seals: it is not a memfd.
    fn validate_cuda_fd(
        &self,
        slot: u64,
        size: u64,
        fd: OwnedFd,
    ) -> Result<Incoming, ChannelError> {
        if !self.inner.cfg.cuda {
            return Err(self.violation(Violation::CudaNotAllowed { slot }));
        }
        let file = std::fs::File::from(fd);
        let ok = file.metadata().map(|m| is_cuda_handle(&m)).unwrap_or(false);
        if !ok {
            return Err(self.violation(Violation::NotCudaHandle { slot }));
        }
        let limit = self.inner.cfg.max_cuda_bytes;
        if size == 0 || !size.is_multiple_of(4096) || size > limit {
            return Err(self.violation(Violation::CudaSize { slot, size, limit }));
        }
        Ok(Incoming {
            kind: layout::FD_KIND_CUDA,
            fd: OwnedFd::from(file),
            size,
            map: None,
            cow: Vec::new(),
            attached: None,
        })
    }

    fn validate_fd(
        &self,
        slot: u64,
        kind: u8,
        extra: u64,
        fd: OwnedFd,
    ) -> Result<Incoming, ChannelError> {
        if kind == layout::FD_KIND_CUDA {
            return self.validate_cuda_fd(slot, extra, fd);
        }
        let from_host = self.inner.side == Side::Worker;
        let (need, forbid) = match kind {
            layout::FD_KIND_SPILL => (sys::SEAL_WRITE | sys::SEAL_SHRINK | sys::SEAL_GROW, 0),
            layout::FD_KIND_ARENA if from_host => (sys::SEAL_SHRINK | sys::SEAL_GROW, 0),
            layout::FD_KIND_ARENA => (sys::SEAL_WRITE | sys::SEAL_SHRINK | sys::SEAL_GROW, 0),
            layout::FD_KIND_OUTPUT if from_host => (
                sys::SEAL_SHRINK | sys::SEAL_GROW,
                sys::SEAL_WRITE | sys::SEAL_FUTURE_WRITE,
            ),
            _ => return Err(self.violation(Violation::SlotKind { slot, kind })),
        };
        // Seals first, size second: once SHRINK|GROW are seen the size cannot change
        // any more (seals are never removed), so the size read after them is final.
        let Ok(seals) = sys::get_seals(fd.as_fd()) else {
            return Err(self.violation(Violation::NotMemfd { slot }));
        };
        let info = match sys::fstat(fd.as_fd()) {
            Ok(i) if i.regular => i,
            _ => return Err(self.violation(Violation::NotMemfd { slot })),
        };
        let write_ok = kind != layout::FD_KIND_ARENA
            || !from_host
            || seals & (sys::SEAL_WRITE | sys::SEAL_FUTURE_WRITE) != 0;
        if seals & need != need || seals & forbid != 0 || !write_ok {
            return Err(self.violation(Violation::Seals {
                slot,
                have: seals,
                need,
            }));
        }
        if kind != layout::FD_KIND_SPILL && info.size == 0 {
            return Err(self.violation(Violation::ArenaSize {
                slot,
                size: 0,
                need: 1,
            }));
        }
        Ok(Incoming {
            kind,
            fd,
            size: info.size,
            map: None,
            cow: Vec::new(),
            attached: None,
        })
    }

    /// Waits for the next frame: spins for the adaptive window, then sleeps on the
    /// futex doorbell, checking the peer's liveness every `liveness_slice`.
    /// `timeout` None waits forever.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Frame, ChannelError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.recv_until(deadline, None)?
            .ok_or(ChannelError::Timeout { op: "recv" })
    }

    /// Spins up to `spin` for a frame without ever sleeping (lowest latency; burns
    /// CPU). `Ok(None)` if nothing came.
    pub fn recv_spin(&self, spin: Duration) -> Result<Option<Frame>, ChannelError> {
        self.check()?;
        let mut rx = lock(&self.inner.rx);
        let mut got = None;
        Spinner::spin(spin, &mut || {
            got = self.try_recv_locked(&mut rx)?;
            Ok::<bool, ChannelError>(got.is_some())
        })?;
        Ok(got)
    }

    /// Blocking receive; with `want`, also returns (None) as soon as a reply for call
    /// `want` shows up in the stash (another thread received it).
    fn recv_until(
        &self,
        deadline: Option<Instant>,
        want: Option<u64>,
    ) -> Result<Option<Frame>, ChannelError> {
        self.check()?;
        let mut rx = lock(&self.inner.rx);
        let shm = self.inner.shm.clone();
        let ring = self.inbound_ring();
        let mut got: Option<Frame> = None;
        let mut spinner = rx.spinner.clone();
        let woke = spinner.wait(
            shm.data_bell(ring),
            deadline,
            self.inner.cfg.liveness_slice,
            || {
                if let Some(w) = want {
                    if lock(&self.inner.stash).contains_key(&w) {
                        return Ok(true);
                    }
                }
                got = self.try_recv_locked(&mut rx)?;
                Ok(got.is_some())
            },
            || self.check_alive(),
        );
        rx.spinner = spinner;
        match woke? {
            Wake::Ready => Ok(got),
            Wake::TimedOut => Err(ChannelError::Timeout { op: "recv" }),
        }
    }

    /// A blocking call: sends `call`, then receives until its reply or error comes.
    /// Other frames meanwhile go to `handler` (which may itself send, reply and make
    /// nested calls: re-entrancy); replies to this thread's other pending calls are
    /// kept for them ([`Channel::wait_reply`]).
    pub fn call(
        &self,
        call: Call,
        timeout: Option<Duration>,
        handler: &mut dyn FnMut(&Channel, Frame) -> Result<(), ChannelError>,
    ) -> Result<Result<Value, ErrorValue>, ChannelError> {
        let id = call.id;
        self.send(&Frame::Call(call))?;
        self.wait_reply(id, timeout, handler)
    }

    /// Waits for the answer to call `id` (see [`Channel::call`]).
    pub fn wait_reply(
        &self,
        id: u64,
        timeout: Option<Duration>,
        handler: &mut dyn FnMut(&Channel, Frame) -> Result<(), ChannelError>,
    ) -> Result<Result<Value, ErrorValue>, ChannelError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(f) = lock(&self.inner.stash).remove(&id) {
                return Ok(answer(f));
            }
            let Some(f) = self.recv_until(deadline, Some(id))? else {
                continue;
            };
            match f {
                Frame::Reply { id: rid, .. } | Frame::Error { id: rid, .. } if rid == id => {
                    return Ok(answer(f))
                }
                Frame::Reply { id: rid, .. } | Frame::Error { id: rid, .. } => {
                    lock(&self.inner.stash).insert(rid, f);
                }
                other => handler(self, other)?,
            }
        }
    }
}

/// A descriptor for `shape` at `offset` in `slot` (`strides` in elements; None =
/// C-contiguous), covering exactly the bytes its elements span.
fn desc_for(
    slot: u64,
    offset: u64,
    dtype: crate::frame::DType,
    shape: &[u64],
    strides: Option<&[i64]>,
) -> Result<TensorDesc, crate::frame::TensorError> {
    let mut d = TensorDesc::contiguous(slot, offset, dtype, shape)?;
    if let Some(st) = strides {
        let span = TensorDesc::new(
            slot,
            Origin::Sender,
            offset,
            u64::MAX - offset,
            dtype,
            shape,
            st,
            false,
        )?
        .span()?;
        d = TensorDesc::new(slot, Origin::Sender, offset, span, dtype, shape, st, false)?;
    }
    Ok(d)
}

/// The major number of a Linux `dev_t` (glibc's `gnu_dev_major`).
fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// Whether `meta` is an NVIDIA driver character device (what exported CUDA
/// allocations are). Unit tests also accept `/dev/null` (major 1, minor 3) so the
/// bookkeeping can be tested on machines without the driver.
fn is_cuda_handle(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !meta.file_type().is_char_device() {
        return false;
    }
    let major = dev_major(meta.rdev());
    major == layout::NVIDIA_MAJOR || (cfg!(test) && major == 1 && (meta.rdev() & 0xff) == 3)
}

fn answer(f: Frame) -> Result<Value, ErrorValue> {
    match f {
        Frame::Reply { value, .. } => Ok(value),
        Frame::Error { error, .. } => Err(error),
        _ => Err(ErrorValue {
            type_name: "RuntimeError".into(),
            message: "not an answer".into(),
            traceback: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! CUDA slots without a GPU: the channel never calls CUDA, so its bookkeeping and
    //! checks run on any machine. `/dev/null` stands in for an NVIDIA control file
    //! (accepted only in these unit tests, see `is_cuda_handle`).
    use super::*;
    use crate::frame::{DType, TensorError};
    use std::sync::atomic::AtomicUsize;

    struct FakeCuda {
        size: u64,
    }

    impl DeviceMemory for FakeCuda {
        fn export_fd(&self) -> std::io::Result<OwnedFd> {
            Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
        }
        fn size(&self) -> u64 {
            self.size
        }
        fn device(&self) -> Device {
            Device::Cuda(0)
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn pair(cuda: bool, tweak: impl FnOnce(&mut ChannelConfig)) -> (Channel, Channel) {
        let mut cfg = ChannelConfig {
            cuda,
            send_timeout: Duration::from_secs(2),
            ..ChannelConfig::default()
        };
        tweak(&mut cfg);
        let (host, fds) = Channel::create(cfg.clone()).unwrap();
        // The worker's own config says nothing about CUDA: the header decides.
        let worker = Channel::open(fds, ChannelConfig { cuda: false, ..cfg }).unwrap();
        (host, worker)
    }

    fn recv(ch: &Channel) -> Result<Frame, ChannelError> {
        for _ in 0..1000 {
            if let Some(f) = ch.try_recv()? {
                return Ok(f);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("no frame arrived");
    }

    fn reply_with(desc: TensorDesc) -> Frame {
        Frame::Reply {
            id: 1,
            value: Value::Tensor(Box::new(desc)),
        }
    }

    /// Pushes a frame without the sender's own checks (a hostile or buggy peer).
    fn push_raw(ch: &Channel, f: &Frame) {
        let mut b = Vec::new();
        f.encode(&mut b, &Limits::default()).unwrap();
        let mut tx = lock(&ch.inner.tx);
        ch.push_locked(&mut tx, &b, true).unwrap();
    }

    fn null_fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    fn cuda_desc(slot: u64, bytes: u64) -> TensorDesc {
        TensorDesc::contiguous(slot, 0, DType::U8, &[bytes])
            .unwrap()
            .on_device(Device::Cuda(0))
    }

    fn violation(r: Result<Frame, ChannelError>) -> Violation {
        match r {
            Err(ChannelError::Violation(v)) => v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn dev_major_matches_glibc() {
        assert_eq!(dev_major(0x103), 1); // /dev/null = makedev(1, 3)
        assert_eq!(dev_major((195 << 8) | 255), 195); // /dev/nvidiactl
                                                      // glibc's makedev(0x12345, 0x678): the major's low 12 bits at 8, the rest at 32.
        let (maj, min) = (0x12345u64, 0x678u64);
        let dev =
            ((maj & 0xfff) << 8) | ((maj & !0xfff) << 32) | (min & 0xff) | ((min & !0xff) << 12);
        assert_eq!(dev_major(dev), 0x12345);
        let null = std::fs::metadata("/dev/null").unwrap();
        assert!(
            is_cuda_handle(&null),
            "the unit-test stand-in is accepted here"
        );
        assert!(!is_cuda_handle(&std::fs::metadata("/dev/zero").unwrap()));
        assert!(!is_cuda_handle(
            &std::fs::metadata("/proc/self/status").unwrap()
        ));
    }

    #[test]
    fn cuda_flag_travels_in_the_header() {
        let (h, w) = pair(true, |_| {});
        assert!(h.config().cuda && w.config().cuda);
        let (h, w) = pair(false, |_| {});
        assert!(!h.config().cuda && !w.config().cuda);
    }

    #[test]
    fn unknown_header_flags_are_refused() {
        let (_h, fds) = Channel::create(ChannelConfig::default()).unwrap();
        sys::pwrite_all(
            fds.ring.as_fd(),
            &6u32.to_le_bytes(),
            layout::OFF_FLAGS as u64,
        )
        .unwrap();
        match Channel::open(fds, ChannelConfig::default()) {
            Err(OpenError::Header {
                field: "flags",
                value: 6,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sharing_cuda_memory_needs_a_cuda_channel() {
        let (h, w) = pair(false, |_| {});
        let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 2 << 20 });
        for ch in [&h, &w] {
            match ch.share_device_tensor(&mem, 0, DType::F32, &[4], None) {
                Err(ChannelError::Misuse { what }) => {
                    assert!(what.contains("share_cuda_ipc"), "{what}")
                }
                other => panic!("{other:?}"),
            }
        }
        let odd: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 4097 });
        let (h, _w) = pair(true, |_| {});
        assert!(matches!(
            h.share_device(&odd),
            Err(ChannelError::Misuse { .. })
        ));
    }

    #[test]
    fn cuda_memory_round_trip_release_and_retire() {
        let (h, w) = pair(true, |_| {});
        let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 2 << 20 });
        let d = h
            .share_device_tensor(&mem, 64, DType::F32, &[2, 3], None)
            .unwrap();
        assert_eq!(d.device, Device::Cuda(0));
        assert!(d.writable);
        assert_eq!(
            h.share_device(&mem).unwrap(),
            d.slot,
            "one fd per allocation while shared"
        );
        h.send(&Frame::Call(Call {
            id: 1,
            parent: None,
            target: 0,
            method: "echo".into(),
            args: vec![Value::Tensor(Box::new(d.clone()))],
            kwargs: vec![],
            deadline_ns: 0,
        }))
        .unwrap();
        assert_eq!(h.shared_device_refs(&mem), Some(1));
        let Frame::Call(c) = recv(&w).unwrap() else {
            panic!("not a call")
        };
        let Value::Tensor(got) = &c.args[0] else {
            panic!("not a tensor")
        };
        assert_eq!(**got, d);
        assert!(
            w.import(got).is_err(),
            "cuda descriptors are not host memory"
        );
        let s = w.device_slot(got).unwrap();
        assert_eq!(s.size, 2 << 20);
        assert!(s.fd.is_some() && s.attached.is_none());
        let drops = Arc::new(AtomicUsize::new(0));
        let att = w.attach_device(got.slot, Arc::new(Counted(drops.clone())));
        drop(att);
        let s = w.device_slot(got).unwrap();
        assert!(s.fd.is_none() && s.attached.is_some());
        drop(s);
        // Echo it back: the host finds its own allocation.
        w.reply(1, Value::Tensor(Box::new(got.echo()))).unwrap();
        let Frame::Reply {
            value: Value::Tensor(back),
            ..
        } = recv(&h).unwrap()
        else {
            panic!("not a reply")
        };
        assert_eq!(back.origin, Origin::Receiver);
        let own = h.exported_device(back.slot).unwrap();
        assert!(own.as_any().downcast_ref::<FakeCuda>().is_some());
        // Release: the host retires the slot and the worker drops what it attached.
        w.release(got).unwrap();
        w.flush().unwrap();
        assert!(h.try_recv().unwrap().is_none());
        assert_eq!(h.shared_device_refs(&mem), None);
        assert!(h.exported_device(d.slot).is_none());
        h.flush().unwrap();
        assert!(w.try_recv().unwrap().is_none());
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the import is dropped once the slot is retired"
        );
        assert!(w.device_slot(got).is_err());
        assert_eq!(lock(&w.inner.fds).cuda, 0);
    }

    #[test]
    fn cuda_fd_on_a_channel_without_cuda_poisons_it() {
        let (h, w) = pair(false, |_| {});
        h.send_fd(5, layout::FD_KIND_CUDA, 2 << 20, &null_fd())
            .unwrap();
        push_raw(&h, &reply_with(cuda_desc(5, 16)));
        assert_eq!(violation(recv(&w)), Violation::CudaNotAllowed { slot: 5 });
        assert!(w.failure().is_some());
    }

    #[test]
    fn cuda_fd_must_be_an_nvidia_device_file() {
        let (h, w) = pair(true, |_| {});
        let memfd = sys::memfd_create("not-cuda").unwrap();
        sys::ftruncate(memfd.as_fd(), 2 << 20).unwrap();
        h.send_fd(5, layout::FD_KIND_CUDA, 2 << 20, &memfd).unwrap();
        push_raw(&h, &reply_with(cuda_desc(5, 16)));
        assert_eq!(violation(recv(&w)), Violation::NotCudaHandle { slot: 5 });
    }

    #[test]
    fn cuda_sizes_are_bounded() {
        for size in [0u64, 4097, (1 << 30) + 4096] {
            let (h, w) = pair(true, |c| c.max_cuda_bytes = 1 << 30);
            h.send_fd(5, layout::FD_KIND_CUDA, size, &null_fd())
                .unwrap();
            push_raw(&h, &reply_with(cuda_desc(5, 16)));
            assert_eq!(
                violation(recv(&w)),
                Violation::CudaSize {
                    slot: 5,
                    size,
                    limit: 1 << 30
                },
                "{size}"
            );
        }
        // A descriptor reaching past the announced size.
        let (h, w) = pair(true, |_| {});
        h.send_fd(5, layout::FD_KIND_CUDA, 8192, &null_fd())
            .unwrap();
        push_raw(&h, &reply_with(cuda_desc(5, 8193)));
        assert!(matches!(
            violation(recv(&w)),
            Violation::Tensor(TensorError::OutOfArena { .. })
        ));
    }

    #[test]
    fn cuda_fds_are_capped() {
        let (h, w) = pair(true, |c| c.max_cuda_fds = 2);
        for slot in 1..=3 {
            h.send_fd(slot, layout::FD_KIND_CUDA, 4096, &null_fd())
                .unwrap();
        }
        push_raw(&h, &reply_with(cuda_desc(3, 16)));
        assert_eq!(violation(recv(&w)), Violation::TooManyFds { limit: 2 });
    }

    #[test]
    fn extra_bytes_are_only_for_cuda() {
        let (h, w) = pair(true, |_| {});
        let a = Arena::create(4096).unwrap();
        a.seal_read_only().unwrap();
        let fd = sys::dup_cloexec(a.fd()).unwrap();
        h.send_fd(5, layout::FD_KIND_ARENA, 4096, &fd).unwrap();
        push_raw(
            &h,
            &reply_with(TensorDesc::contiguous(5, 0, DType::U8, &[16]).unwrap()),
        );
        assert!(matches!(violation(recv(&w)), Violation::FdMessage { .. }));
    }

    #[test]
    fn device_and_slot_kind_must_agree() {
        // A cuda descriptor naming a memfd arena.
        let (h, w) = pair(true, |_| {});
        let a = Arena::create(4096).unwrap();
        a.seal_read_only().unwrap();
        let slot = h.share(&a).unwrap();
        push_raw(&h, &reply_with(cuda_desc(slot, 16)));
        assert!(matches!(violation(recv(&w)), Violation::SlotKind { .. }));
        // A cpu descriptor naming a CUDA allocation.
        let (h, w) = pair(true, |_| {});
        let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 4096 });
        let slot = h.share_device(&mem).unwrap();
        push_raw(
            &h,
            &reply_with(TensorDesc::contiguous(slot, 0, DType::U8, &[16]).unwrap()),
        );
        assert!(matches!(violation(recv(&w)), Violation::SlotKind { .. }));
        // The sender's own check refuses the same mistake before it leaves.
        let (h, _w) = pair(true, |_| {});
        let slot = h.share_device(&mem).unwrap();
        let cpu = TensorDesc::contiguous(slot, 0, DType::U8, &[16]).unwrap();
        assert!(matches!(
            h.send(&reply_with(cpu)),
            Err(ChannelError::Misuse { .. })
        ));
    }

    #[test]
    fn worker_may_share_cuda_memory_on_a_cuda_channel() {
        let (h, w) = pair(true, |_| {});
        let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 4096 });
        let d = w
            .share_device_tensor(&mem, 0, DType::I32, &[8], Some(&[1]))
            .unwrap();
        w.reply(1, Value::Tensor(Box::new(d.clone()))).unwrap();
        let Frame::Reply {
            value: Value::Tensor(got),
            ..
        } = recv(&h).unwrap()
        else {
            panic!()
        };
        assert_eq!(*got, d);
        assert_eq!(h.device_slot(&got).unwrap().size, 4096);
        assert_eq!(h.held_tensors(), vec![(d.slot, 1)]);
    }
}
