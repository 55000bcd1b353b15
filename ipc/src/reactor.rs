//! The host reactor: one thread that waits on every worker's doorbell, pidfd,
//! socket and deadline, and reports events through an eventfd.
//!
//! Backends, best first ([`Backend`]):
//! * **io_uring**: `IORING_OP_FUTEX_WAITV` over the data doorbells (groups of up to
//!   127 plus the reactor's own control word), `IORING_OP_POLL_ADD` on each pidfd
//!   and on each socket (`POLLRDHUP`), and the `io_uring_enter` wait timeout for the
//!   next deadline. Death is noticed the moment the pidfd fires.
//! * **futex_waitv loop** (kernels without io_uring futex ops, 5.16+): the
//!   `futex_waitv` syscall over the doorbells, with pidfds and sockets polled at
//!   least every 10 ms.
//! * **polling loop** (older kernels): checks everything every millisecond.
//!
//! Usage (e.g. from Python asyncio): `loop.add_reader(reactor.event_fd(), cb)`;
//! `cb` calls [`Reactor::drain`] and, for each [`EventKind::Readable`], calls the
//! channel's `try_recv()` until it returns `None` — which re-arms the channel. A
//! channel reports `Readable` once and is not watched again until then.
//!
//! Channels with `nonblocking_send` queue what does not fit; the reactor then also
//! waits on their "space freed" doorbell and pushes the outbox on itself
//! ([`Channel::flush_out`]), re-checking at least every 10 ms (a full socket, and
//! the stall clock). A channel whose flush fails (poisoned: a stalled or hostile
//! peer) is reported `Readable`, so its owner's next `try_recv` returns the error.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::channel::{Channel, ReactorLink};
use crate::sys;

/// Names one registration; carried by every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The channel has frames: call `try_recv` until it returns `None`.
    Readable,
    /// The peer's process exited (its pidfd fired).
    PeerExited,
    /// The peer's socket end closed.
    PeerClosed,
    /// A deadline set with [`Reactor::set_deadline`] passed; carries its id.
    Deadline(u64),
    /// The peer rang its doorbell over and over with nothing to read; the channel is
    /// no longer watched (treat as a protocol violation).
    DoorbellStorm,
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Which registration.
    pub token: Token,
    /// What happened.
    pub kind: EventKind,
}

/// How the reactor waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring with FUTEX_WAITV and POLL_ADD.
    IoUring,
    /// The futex_waitv syscall; pidfds polled every 10 ms.
    FutexWaitv,
    /// Check everything every millisecond.
    Polling,
}

impl Backend {
    /// Short description for `nodecell check`.
    pub fn describe(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring (FUTEX_WAITV + POLL_ADD on pidfds)",
            Backend::FutexWaitv => "fallback: futex_waitv syscall loop, pidfds polled every 10 ms",
            Backend::Polling => "fallback: 1 ms polling loop",
        }
    }

    /// The best backend this kernel supports.
    pub fn detect() -> Backend {
        if crate::probe::io_uring_futex_ops().unwrap_or(false) {
            Backend::IoUring
        } else if crate::probe::futex_waitv_syscall() {
            Backend::FutexWaitv
        } else {
            Backend::Polling
        }
    }
}

/// Consecutive wakes with nothing to read before a channel is muted.
const STORM_LIMIT: u32 = 100_000;
/// Doorbells per FUTEX_WAITV (the kernel allows 128; one slot is the control word).
const GROUP: usize = 127;
const FALLBACK_POLL: Duration = Duration::from_millis(10);
/// How often a channel with a waiting outbox is flushed even without a doorbell.
const WRITE_POLL: Duration = Duration::from_millis(10);
/// Which doorbell of a channel a wait names.
const BELL_DATA: u8 = 0;
const BELL_SPACE: u8 = 1;

enum Cmd {
    Register(Token, Channel, Arc<AtomicBool>),
    Deregister(Token),
    Rearm(Token),
    WantWrite(Token),
    Deadline(Token, u64, Instant),
    CancelDeadline(Token, u64),
}

pub(crate) struct Shared {
    control: AtomicU32,
    cmds: Mutex<Vec<Cmd>>,
    events: Mutex<VecDeque<Event>>,
    eventfd: OwnedFd,
    stop: AtomicBool,
    next_token: AtomicU64,
    links: Mutex<HashMap<Token, Arc<AtomicBool>>>,
}

impl Shared {
    fn push(&self, c: Cmd) {
        self.cmds.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        self.control.fetch_add(1, Ordering::Release);
        let _ = sys::futex_wake(&self.control, i32::MAX);
    }

    /// Called by a channel whose `try_recv` found nothing: watch it again if it had
    /// reported Readable.
    pub(crate) fn rearm(&self, t: Token) {
        let flag = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&t)
            .cloned();
        if let Some(f) = flag {
            if f.swap(false, Ordering::AcqRel) {
                self.push(Cmd::Rearm(t));
            }
        }
    }

    /// Called by a channel that queued frames in its outbox: flush it as space frees.
    pub(crate) fn want_write(&self, t: Token) {
        self.push(Cmd::WantWrite(t));
    }

    fn emit(&self, evs: &mut Vec<Event>) {
        if evs.is_empty() {
            return;
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(evs.drain(..));
        let _ = sys::eventfd_signal(self.eventfd.as_fd());
    }
}

/// The reactor: owns its thread; dropping it stops the thread.
pub struct Reactor {
    shared: Arc<Shared>,
    backend: Backend,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("backend", &self.backend)
            .finish()
    }
}

static GLOBAL: OnceLock<Result<Reactor, String>> = OnceLock::new();

impl Reactor {
    /// Starts a reactor with the best backend this kernel has.
    pub fn start() -> std::io::Result<Reactor> {
        Reactor::start_with(Backend::detect())
    }

    /// Starts a reactor with a given backend (tests use this to exercise fallbacks).
    pub fn start_with(backend: Backend) -> std::io::Result<Reactor> {
        let shared = Arc::new(Shared {
            control: AtomicU32::new(0),
            cmds: Mutex::new(Vec::new()),
            events: Mutex::new(VecDeque::new()),
            eventfd: sys::eventfd()?,
            stop: AtomicBool::new(false),
            next_token: AtomicU64::new(1),
            links: Mutex::new(HashMap::new()),
        });
        let ring = match backend {
            Backend::IoUring => Some(io_uring::IoUring::new(256)?),
            _ => None,
        };
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nodecell-reactor".into())
            .spawn(move || {
                let mut st = State::new(s);
                match ring {
                    Some(r) => st.run_uring(r),
                    None => st.run_fallback(backend),
                }
            })?;
        Ok(Reactor {
            shared,
            backend,
            thread: Some(thread),
        })
    }

    /// The process-wide reactor, started on first use.
    pub fn global() -> Result<&'static Reactor, String> {
        GLOBAL
            .get_or_init(|| Reactor::start().map_err(|e| format!("starting the reactor: {e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Watches `ch`: its inbound doorbell, its peer pidfd (set it first with
    /// `set_peer_pid`), and its socket. A channel belongs to at most one reactor,
    /// which keeps it alive until [`Reactor::deregister`] (call that after
    /// `Channel::close` when a worker goes away).
    pub fn register(&self, ch: &Channel) -> Token {
        let t = Token(self.shared.next_token.fetch_add(1, Ordering::Relaxed));
        let flag = Arc::new(AtomicBool::new(false));
        self.shared
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(t, flag.clone());
        *ch.inner().reactor.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReactorLink {
            reactor: Arc::downgrade(&self.shared),
            token: t,
        });
        self.shared.push(Cmd::Register(t, ch.clone(), flag));
        t
    }

    /// Stops watching a registration (and forgets its deadlines).
    pub fn deregister(&self, t: Token) {
        self.shared
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t);
        self.shared.push(Cmd::Deregister(t));
    }

    /// Re-arms a channel explicitly (`try_recv` returning `None` does this itself).
    pub fn rearm(&self, t: Token) {
        self.shared.rearm(t)
    }

    /// Reports `Deadline(id)` for `t` at `at` (e.g. a call's timeout).
    pub fn set_deadline(&self, t: Token, id: u64, at: Instant) {
        self.shared.push(Cmd::Deadline(t, id, at));
    }

    /// Cancels a deadline (e.g. the call was answered).
    pub fn cancel_deadline(&self, t: Token, id: u64) {
        self.shared.push(Cmd::CancelDeadline(t, id));
    }

    /// The eventfd that becomes readable when events are queued (for `add_reader`).
    pub fn event_fd(&self) -> RawFd {
        self.shared.eventfd.as_raw_fd()
    }

    /// Takes every queued event (and resets the eventfd).
    pub fn drain(&self) -> Vec<Event> {
        let _ = sys::eventfd_drain(self.shared.eventfd.as_fd());
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// Blocks until at least one event is queued or `timeout` passes, then drains.
    pub fn wait(&self, timeout: Option<Duration>) -> Vec<Event> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ev = self.drain();
            if !ev.is_empty() {
                return ev;
            }
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return ev;
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
            };
            let _ = sys::poll_one(self.shared.eventfd.as_fd(), sys::POLLIN, ms);
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.control.fetch_add(1, Ordering::Release);
        let _ = sys::futex_wake(&self.shared.control, i32::MAX);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Entry {
    ch: Channel,
    reported: Arc<AtomicBool>,
    armed: bool,
    muted: bool,
    pidfd: Option<Arc<OwnedFd>>,
    last_seq: Option<u32>,
    /// This end's consumer index when `last_seq` was taken: a rung doorbell with
    /// nothing to read is spurious only if nobody here consumed meanwhile (a thread
    /// that waits for its reply itself takes the frame before this thread looks).
    last_tail: u64,
    spurious: u32,
    pid_done: bool,
    sock_done: bool,
    /// The outbox holds frames: wait on the space doorbell and flush.
    want_write: bool,
}

struct State {
    shared: Arc<Shared>,
    entries: HashMap<Token, Entry>,
    deadlines: BinaryHeap<std::cmp::Reverse<(Instant, u64, u64)>>,
    live_deadlines: HashSet<(u64, u64)>,
    out: Vec<Event>,
    /// Deregistered channels, kept mapped until no submitted FUTEX_WAITV can name them,
    /// with the last wait generation that may (the io_uring loop frees an entry once
    /// every outstanding generation is newer; `u64::MAX` = not yet stamped).
    graveyard: Vec<(u64, Channel)>,
}

const OP_WAITV: u64 = 1;
const OP_PID: u64 = 2;
const OP_SOCK: u64 = 3;
const OP_CANCEL: u64 = 4;

fn ud(op: u64, payload: u64) -> u64 {
    (op << 56) | (payload & ((1 << 56) - 1))
}

impl State {
    fn new(shared: Arc<Shared>) -> State {
        State {
            shared,
            entries: HashMap::new(),
            deadlines: BinaryHeap::new(),
            live_deadlines: HashSet::new(),
            out: Vec::new(),
            graveyard: Vec::new(),
        }
    }

    /// Applies queued commands; returns registrations added (for their polls).
    fn apply(&mut self) -> (Vec<Token>, Vec<Token>) {
        let cmds = std::mem::take(&mut *self.shared.cmds.lock().unwrap_or_else(|e| e.into_inner()));
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for c in cmds {
            match c {
                Cmd::Register(t, ch, reported) => {
                    let pidfd = ch.peer_pidfd();
                    let want_write = ch.has_outbox();
                    self.entries.insert(
                        t,
                        Entry {
                            ch,
                            reported,
                            armed: true,
                            muted: false,
                            pidfd,
                            last_seq: None,
                            last_tail: 0,
                            spurious: 0,
                            pid_done: false,
                            sock_done: false,
                            want_write,
                        },
                    );
                    added.push(t);
                }
                Cmd::Deregister(t) => {
                    if let Some(e) = self.entries.remove(&t) {
                        *e.ch
                            .inner()
                            .reactor
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = None;
                        self.graveyard.push((u64::MAX, e.ch));
                        removed.push(t);
                    }
                    self.live_deadlines.retain(|(tok, _)| *tok != t.0);
                }
                Cmd::Rearm(t) => {
                    if let Some(e) = self.entries.get_mut(&t) {
                        e.armed = true;
                    }
                }
                Cmd::WantWrite(t) => {
                    if let Some(e) = self.entries.get_mut(&t) {
                        e.want_write = true;
                    }
                }
                Cmd::Deadline(t, id, at) => {
                    self.live_deadlines.insert((t.0, id));
                    self.deadlines.push(std::cmp::Reverse((at, t.0, id)));
                }
                Cmd::CancelDeadline(t, id) => {
                    self.live_deadlines.remove(&(t.0, id));
                }
            }
        }
        (added, removed)
    }

    /// For every armed channel: announce the sleep and re-check; readable ones become
    /// events (and disarm), the rest are returned as (token, bell, futex word,
    /// expected). Channels with a waiting outbox are flushed here and, if frames still
    /// wait, their "space freed" doorbell is waited on too.
    fn arm(&mut self) -> Vec<(Token, u8, *const AtomicU32, u32)> {
        let mut waiters = Vec::new();
        for (t, e) in self.entries.iter_mut() {
            if e.want_write && !e.muted {
                let shm = e.ch.shm().clone();
                let bell = shm.space_bell(e.ch.outbound_ring());
                let seq = bell.prepare();
                match e.ch.flush_out() {
                    Ok(true) => {
                        bell.cancel();
                        e.want_write = false;
                    }
                    Ok(false) => {
                        waiters.push((*t, BELL_SPACE, bell.seq_word() as *const AtomicU32, seq));
                    }
                    Err(_) => {
                        // Poisoned (stalled or hostile peer): the owner's next receive
                        // returns the error.
                        bell.cancel();
                        e.want_write = false;
                        if e.armed {
                            e.armed = false;
                            e.reported.store(true, Ordering::Release);
                            self.out.push(Event {
                                token: *t,
                                kind: EventKind::Readable,
                            });
                            continue;
                        }
                    }
                }
            }
            if !e.armed || e.muted {
                continue;
            }
            let ring = e.ch.inbound_ring();
            let shm = e.ch.shm().clone();
            let bell = shm.data_bell(ring);
            let seq = bell.prepare();
            if e.ch.readable() {
                bell.cancel();
                e.armed = false;
                e.spurious = 0;
                e.last_seq = None;
                e.reported.store(true, Ordering::Release);
                self.out.push(Event {
                    token: *t,
                    kind: EventKind::Readable,
                });
                continue;
            }
            let tail = e.ch.inbound_consumed();
            if e.last_seq.is_some_and(|s| s != seq) && tail == e.last_tail {
                e.spurious += 1;
                if e.spurious > STORM_LIMIT {
                    e.muted = true;
                    self.out.push(Event {
                        token: *t,
                        kind: EventKind::DoorbellStorm,
                    });
                    continue;
                }
            }
            if tail != e.last_tail {
                e.spurious = 0;
            }
            e.last_seq = Some(seq);
            e.last_tail = tail;
            waiters.push((*t, BELL_DATA, bell.seq_word() as *const AtomicU32, seq));
        }
        waiters.sort_by_key(|w| (w.0, w.1));
        waiters
    }

    /// When to look at waiting outboxes again even without a doorbell.
    fn write_tick(&self, next: Option<Instant>) -> Option<Instant> {
        if !self.entries.values().any(|e| e.want_write && !e.muted) {
            return next;
        }
        let at = Instant::now() + WRITE_POLL;
        Some(next.map_or(at, |n| n.min(at)))
    }

    fn expire(&mut self) -> Option<Instant> {
        let now = Instant::now();
        while let Some(std::cmp::Reverse((at, t, id))) = self.deadlines.peek().copied() {
            if !self.live_deadlines.contains(&(t, id)) {
                self.deadlines.pop();
                continue;
            }
            if at > now {
                return Some(at);
            }
            self.deadlines.pop();
            self.live_deadlines.remove(&(t, id));
            self.out.push(Event {
                token: Token(t),
                kind: EventKind::Deadline(id),
            });
        }
        None
    }

    fn run_uring(&mut self, mut ring: io_uring::IoUring) {
        use io_uring::{opcode, types};
        let mut gen: u64 = 0;
        // What is submitted now: (token, expected) list, and per group its waiter array
        // (kept alive until the group's completion arrives).
        let mut submitted: Vec<(Token, u8, u32)> = Vec::new();
        let mut control_seen = u32::MAX;
        let mut groups: HashMap<u64, Vec<types::FutexWaitV>> = HashMap::new();
        let mut outstanding_gen: Option<u64> = None;
        while !self.shared.stop.load(Ordering::Acquire) {
            let control = self.shared.control.load(Ordering::Acquire);
            let (added, removed) = self.apply();
            // Channels removed now may still be named by the generation in flight.
            for (g, _) in self.graveyard.iter_mut().filter(|(g, _)| *g == u64::MAX) {
                *g = gen;
            }
            // ...and can go at once if no wait of that generation (or older) is outstanding.
            let oldest = groups.keys().map(|k| k >> 16).min();
            self.graveyard
                .retain(|(g, _)| oldest.is_some_and(|o| o <= *g));
            for t in added {
                let Some(e) = self.entries.get(&t) else {
                    continue;
                };
                if let Some(p) = &e.pidfd {
                    let sqe = opcode::PollAdd::new(types::Fd(p.as_raw_fd()), sys::POLLIN as u32)
                        .build()
                        .user_data(ud(OP_PID, t.0));
                    push_sqe(&mut ring, &sqe);
                }
                let sqe =
                    opcode::PollAdd::new(types::Fd(e.ch.socket_fd()), (sys::POLLRDHUP) as u32)
                        .build()
                        .user_data(ud(OP_SOCK, t.0));
                push_sqe(&mut ring, &sqe);
            }
            for t in removed {
                for op in [OP_PID, OP_SOCK] {
                    let sqe = opcode::AsyncCancel::new(ud(op, t.0))
                        .build()
                        .user_data(ud(OP_CANCEL, 0));
                    push_sqe(&mut ring, &sqe);
                }
            }
            let waiters = self.arm();
            let want: Vec<(Token, u8, u32)> = waiters.iter().map(|w| (w.0, w.1, w.3)).collect();
            if outstanding_gen.is_none() || want != submitted || control != control_seen {
                if let Some(g) = outstanding_gen.take() {
                    for gi in 0..groups_in(submitted.len()) {
                        let sqe = opcode::AsyncCancel::new(ud(OP_WAITV, (g << 16) | gi as u64))
                            .build()
                            .user_data(ud(OP_CANCEL, 0));
                        push_sqe(&mut ring, &sqe);
                    }
                }
                gen += 1;
                let chunks: Vec<&[(Token, u8, *const AtomicU32, u32)]> = if waiters.is_empty() {
                    vec![&[]]
                } else {
                    waiters.chunks(GROUP).collect()
                };
                for (gi, chunk) in chunks.iter().enumerate() {
                    let mut v = Vec::with_capacity(chunk.len() + 1);
                    v.push(futexv(&self.shared.control, control));
                    for (_, _, w, s) in chunk.iter() {
                        // SAFETY: each pointer is a doorbell word inside the channel
                        // memfd mapping that the Entry's Channel keeps mapped.
                        v.push(futexv(unsafe { &**w }, *s));
                    }
                    let key = (gen << 16) | gi as u64;
                    let sqe = opcode::FutexWaitV::new(v.as_ptr(), v.len() as u32)
                        .build()
                        .user_data(ud(OP_WAITV, key));
                    groups.insert(key, v);
                    push_sqe(&mut ring, &sqe);
                }
                outstanding_gen = Some(gen);
                submitted = want;
                control_seen = control;
            }
            let next = self.expire();
            let next = self.write_tick(next);
            let mut evs = std::mem::take(&mut self.out);
            self.shared.emit(&mut evs);
            self.out = evs;
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let r = match next {
                Some(at) => {
                    let d = at
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_micros(1));
                    let ts = types::Timespec::new()
                        .sec(d.as_secs())
                        .nsec(d.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    ring.submitter().submit_with_args(1, &args)
                }
                None => ring.submit_and_wait(1),
            };
            if let Err(e) = r {
                let code = e.raw_os_error();
                if code != Some(sys::errno::ETIME)
                    && code != Some(sys::errno::EINTR)
                    && code != Some(sys::errno::EAGAIN)
                {
                    // EBUSY (CQ overflow) resolves by reaping below; anything else: back off.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let cqes: Vec<(u64, i32)> = ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (u, res) in cqes {
                let (op, payload) = (u >> 56, u & ((1 << 56) - 1));
                match op {
                    OP_WAITV => {
                        groups.remove(&payload);
                        // Free deregistered channels that no outstanding wait can name.
                        let oldest = groups.keys().map(|k| k >> 16).min();
                        self.graveyard
                            .retain(|(g, _)| oldest.is_some_and(|o| o <= *g));
                        if outstanding_gen == Some(payload >> 16) {
                            // One group fired (or the words changed before it slept):
                            // rebuild everything next round.
                            outstanding_gen = None;
                            let _ = res;
                        }
                    }
                    OP_PID | OP_SOCK => {
                        let t = Token(payload);
                        if res == -sys::errno::ECANCELED {
                            continue;
                        }
                        if let Some(e) = self.entries.get_mut(&t) {
                            let kind = if op == OP_PID {
                                e.pid_done = true;
                                EventKind::PeerExited
                            } else {
                                e.sock_done = true;
                                EventKind::PeerClosed
                            };
                            self.out.push(Event { token: t, kind });
                        }
                    }
                    _ => {}
                }
            }
        }
        // Dropping the ring cancels whatever is still in flight.
        drop(ring);
        self.graveyard.clear();
    }

    fn run_fallback(&mut self, backend: Backend) {
        while !self.shared.stop.load(Ordering::Acquire) {
            let control = self.shared.control.load(Ordering::Acquire);
            self.apply();
            let waiters = self.arm();
            // Pidfds and sockets: poll without blocking.
            let fired: Vec<(Token, EventKind)> = {
                let mut who: Vec<(Token, EventKind)> = Vec::new();
                let mut polls: Vec<(std::os::fd::BorrowedFd<'_>, i16)> = Vec::new();
                for (t, e) in &self.entries {
                    if let (Some(p), false) = (&e.pidfd, e.pid_done) {
                        who.push((*t, EventKind::PeerExited));
                        polls.push((p.as_fd(), sys::POLLIN));
                    }
                    if !e.sock_done {
                        who.push((*t, EventKind::PeerClosed));
                        polls.push((e.ch.socket_borrowed(), sys::POLLRDHUP));
                    }
                }
                let mut rev = vec![0i16; polls.len()];
                if polls.is_empty() || sys::poll_many(&polls, &mut rev, 0).is_err() {
                    Vec::new()
                } else {
                    who.into_iter()
                        .zip(rev)
                        .filter(|((_, k), r)| match k {
                            EventKind::PeerExited => *r != 0,
                            _ => r & (sys::POLLRDHUP | sys::POLLHUP | sys::POLLERR) != 0,
                        })
                        .map(|(w, _)| w)
                        .collect()
                }
            };
            for (t, k) in fired {
                if let Some(e) = self.entries.get_mut(&t) {
                    if k == EventKind::PeerExited {
                        e.pid_done = true;
                    } else {
                        e.sock_done = true;
                    }
                }
                self.out.push(Event { token: t, kind: k });
            }
            let next = self.expire();
            let next = self.write_tick(next);
            let mut evs = std::mem::take(&mut self.out);
            self.shared.emit(&mut evs);
            self.out = evs;
            let mut timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
            if !self.entries.is_empty() {
                timeout = Some(timeout.map_or(FALLBACK_POLL, |t| t.min(FALLBACK_POLL)));
            }
            if backend == Backend::FutexWaitv && waiters.len() < GROUP + 1 {
                let mut v = vec![sys::FutexWaitv::new(&self.shared.control, control)];
                for (_, _, w, s) in &waiters {
                    // SAFETY: the word lives in a channel mapping kept alive by its Entry.
                    v.push(sys::FutexWaitv::new(unsafe { &**w }, *s));
                }
                let _ = sys::futex_waitv(&v, timeout);
            } else {
                let t = timeout.map_or(Duration::from_millis(1), |t| {
                    t.min(Duration::from_millis(1))
                });
                if self.shared.control.load(Ordering::Acquire) == control {
                    sys::sleep(t);
                }
            }
            self.graveyard.clear();
        }
    }
}

fn groups_in(n: usize) -> usize {
    n.div_ceil(GROUP).max(1)
}

fn futexv(word: &AtomicU32, expected: u32) -> io_uring::types::FutexWaitV {
    io_uring::types::FutexWaitV::new()
        .val(u64::from(expected))
        .uaddr(word.as_ptr() as u64)
        .flags(sys::FUTEX2_SIZE_U32)
}

/// Pushes one SQE, submitting first if the queue is full.
fn push_sqe(ring: &mut io_uring::IoUring, sqe: &io_uring::squeue::Entry) {
    loop {
        // SAFETY: each SQE refers only to memory outliving its completion: futex words in
        // registered entries' mappings (removed ones cancelled, kept in `groups`), fds, or none.
        let pushed = unsafe { ring.submission().push(sqe).is_ok() };
        if pushed {
            return;
        }
        let _ = ring.submit();
    }
}
