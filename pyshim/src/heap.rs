//! The worker heap: torch's large CPU allocations in a worker come from the pooled
//! arenas of its channel to the host, so a tensor the worker returns is already in
//! shared memory and crosses without a copy.
//!
//! torch allocates every CPU storage with `c10::alloc_cpu` (`posix_memalign`) and
//! frees it with `c10::free_cpu` (`free`), both in `libc10.so`. [`install`] rewrites
//! that library's GOT slots for the two functions ([`crate::sys::got`]); every other
//! library keeps libc's. Then:
//!
//! * `posix_memalign` of at least [`min_bytes`] (1 MiB; `NODECELL_WORKER_HEAP_MIN`,
//!   a size such as `128KiB`, overrides it) and at most [`MAX_BYTES`] with an alignment of at most a
//!   page, while the pool holds fewer arenas (memfds) than a quarter of the worker's
//!   open-files limit, takes an arena from [`ArenaPool::global`] for the worker's channel (a free
//!   one of the same size class, pre-faulted, or a new one), lends it
//!   ([`IpcArena::set_lent`]), registers it for [`crate::dlpack::locate`] (so the
//!   encoder shares it as it is) and remembers it by address. Smaller, larger or
//!   over-aligned requests, or any failure, go to libc. Arenas are page aligned.
//! * `free` of a remembered address drops the heap's reference: the pool reuses the
//!   arena once the host also gave back every descriptor naming it, and trims free
//!   arenas beyond its limit (`NODECELL_TENSOR_POOL`), least recently used first, so
//!   the worker's idle memory stays bounded as before. Any other address goes to libc
//!   (a block allocated before the hook was installed too).
//! * Sending a lent arena's bytes remaps the worker's own mapping copy-on-write
//!   ([`IpcArena::privatize`], in [`crate::tensor`]): the worker's code keeps its
//!   tensor and whatever it writes there later stays private, as with the copy it
//!   replaces; sending it again after such a write sends a copy. `free` maps it
//!   shared (pre-faulted) again ([`IpcArena::reshare`]; the pool's take does it too
//!   if that failed). Each remap costs a page-table walk (64 MiB of 4 KiB pages here:
//!   ~1.5 ms to make private, ~2 ms to map shared and pre-fault), well under a copy.
//!
//! Only in a worker, after its fork from the zygote: never in the host, never in a
//! zygote (its children must not share a heap); a process forked from a worker stops
//! taking from it (a fork handler). `NODECELL_WORKER_HEAP=0` turns it off; channels
//! with `frozen_outputs` never use it (their outputs are frozen copies). When torch is
//! imported after the worker started, the hook is installed when the channel first
//! sees torch ([`torch_imported`]); tensors allocated before are copied when sent.
//!
//! numpy (>= 1.22) gets the same policy ([`crate::sys::numpy`]: its default
//! `PyDataMem_Handler` pointed at ours), set when the heap starts or torch is first
//! seen, if numpy is imported by then: its large array buffers come from the heap, the
//! rest from numpy's own functions.
//!
//! The hooks run on torch's threads (intra-op pools, Python threads without the GIL):
//! nothing here touches Python.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use nodecell_ipc::{Arena as IpcArena, ArenaPool, Side, WeakChannel};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::channel::PyChannel;
use crate::sys::{alloc, got};

/// The library whose allocations the heap serves.
pub const LIBRARY: &str = "libc10.so";

/// Default smallest request served (bytes).
pub const DEFAULT_MIN_BYTES: usize = 1 << 20;

/// Largest request served: bigger ones go to libc (their memory is returned to the
/// system when freed, not kept by the pool, and such tensors are copied when sent).
pub const MAX_BYTES: usize = 1 << 30;

const PAGE: usize = 4096;

/// Whether `posix_memalign` takes from the heap now.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Set in a process forked from a worker: the table's lock may be held by a thread
/// that did not survive the fork, so `free` only tries it.
static FORKED: AtomicBool = AtomicBool::new(false);
static PATCHED: AtomicBool = AtomicBool::new(false);
/// numpy's allocation policy set (in the worker's main thread; see [`install_numpy`]).
static NUMPY: AtomicBool = AtomicBool::new(false);
static MIN_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_MIN_BYTES);
/// Most arenas (memfds) the pool may hold for the heap to take another: a quarter of
/// the open-files limit, so the worker's own files never run short.
static MAX_ARENAS: AtomicUsize = AtomicUsize::new(1024);
/// Blocks handed out and not freed (a cheap "nothing to look up" for `free`).
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static TAKES: AtomicU64 = AtomicU64::new(0);
static TAKEN_BYTES: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static SENT: AtomicU64 = AtomicU64::new(0);
static SENT_BYTES: AtomicU64 = AtomicU64::new(0);
static PRIVATIZED: AtomicU64 = AtomicU64::new(0);
static COPIED: AtomicU64 = AtomicU64::new(0);

/// The channel the heap's arenas are for (the worker's one channel to the host).
static CHANNEL: Mutex<Option<WeakChannel>> = Mutex::new(None);
/// Live blocks by address.
static TABLE: Mutex<Option<HashMap<usize, Arc<IpcArena>>>> = Mutex::new(None);
/// Why the heap is not on, for the stats (`None`: on, or not asked yet).
static OFF_REASON: Mutex<Option<&'static str>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The smallest request the heap serves now.
pub fn min_bytes() -> usize {
    MIN_BYTES.load(Ordering::Relaxed)
}

/// A block of `size` bytes aligned to `align` from the heap (its address), or None
/// (the caller asks libc). Called by the `posix_memalign` hook on any thread.
pub(crate) fn take(align: usize, size: usize) -> Option<usize> {
    if !ENABLED.load(Ordering::Relaxed)
        || size < MIN_BYTES.load(Ordering::Relaxed)
        || size > MAX_BYTES
        || align > PAGE
        || !align.is_power_of_two()
    {
        return None;
    }
    // A panic must not cross the C boundary: it becomes a libc allocation.
    let got = std::panic::catch_unwind(|| take_arena(size)).ok().flatten();
    if got.is_none() {
        FALLBACKS.fetch_add(1, Ordering::Relaxed);
    }
    got
}

fn take_arena(size: usize) -> Option<usize> {
    let ch = lock(&CHANNEL).as_ref()?.upgrade()?;
    let pool = ArenaPool::global();
    if pool.arenas() >= MAX_ARENAS.load(Ordering::Relaxed) {
        return None;
    }
    let arena = pool.take(&ch, size).ok()?;
    let ptr = arena.as_ptr() as usize;
    if ptr == 0 || !ptr.is_multiple_of(PAGE) {
        return None;
    }
    arena.set_lent(true);
    crate::dlpack::register_arena(&arena);
    let len = arena.len();
    lock(&TABLE)
        .get_or_insert_with(HashMap::new)
        .insert(ptr, arena);
    LIVE.fetch_add(1, Ordering::AcqRel);
    LIVE_BYTES.fetch_add(len, Ordering::Relaxed);
    TAKES.fetch_add(1, Ordering::Relaxed);
    TAKEN_BYTES.fetch_add(len as u64, Ordering::Relaxed);
    Some(ptr)
}

/// Takes back a heap block (true), or says it is not one (false: libc's `free` takes
/// it). Called by the `free` hook on any thread, for every pointer `libc10.so` frees.
pub(crate) fn give_back(ptr: usize) -> bool {
    if ptr == 0 || !ptr.is_multiple_of(PAGE) || LIVE.load(Ordering::Acquire) == 0 {
        return false;
    }
    let arena = {
        let mut t = if FORKED.load(Ordering::Relaxed) {
            match TABLE.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                // Held by a thread the fork left behind: it may be a heap block, and
                // libc must never see one; keep it (a leak in this child only).
                Err(TryLockError::WouldBlock) => return true,
            }
        } else {
            lock(&TABLE)
        };
        match t.as_mut().and_then(|m| m.remove(&ptr)) {
            Some(a) => a,
            None => return false,
        }
    };
    // Sent, so mapped copy-on-write here: mapped shared (and pre-faulted) again now,
    // while the pool cannot hand it out yet (we still hold it), instead of in the take
    // that reuses it: typically the worker frees an output right after its reply went,
    // off the host's wait. (On failure the pool's take tries again.)
    let _ = arena.reshare();
    arena.set_lent(false);
    LIVE.fetch_sub(1, Ordering::AcqRel);
    LIVE_BYTES.fetch_sub(arena.len(), Ordering::Relaxed);
    FREES.fetch_add(1, Ordering::Relaxed);
    // Dropped outside the table's lock: the pool keeps it (or it is unmapped now), and
    // drops free arenas beyond its limit now rather than at the next take, so an idle
    // worker holds at most the limit.
    drop(arena);
    if !FORKED.load(Ordering::Relaxed) {
        ArenaPool::global().trim();
    }
    true
}

/// The length of the heap block at `ptr` (its arena's, at least what was asked for), or
/// None when it is not one.
pub(crate) fn block_len(ptr: usize) -> Option<usize> {
    if ptr == 0 || !ptr.is_multiple_of(PAGE) || LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let t = if FORKED.load(Ordering::Relaxed) {
        TABLE.try_lock().ok()?
    } else {
        lock(&TABLE)
    };
    t.as_ref()?.get(&ptr).map(|a| a.len())
}

/// Counts a lent arena's bytes sent without a copy, and whether that remapped it.
pub(crate) fn note_sent(bytes: u64, privatized: bool) {
    SENT.fetch_add(1, Ordering::Relaxed);
    SENT_BYTES.fetch_add(bytes, Ordering::Relaxed);
    if privatized {
        PRIVATIZED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a lent arena's bytes copied when sent (the worker wrote them after an
/// earlier send, into its private pages).
pub(crate) fn note_copied() {
    COPIED.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn forked_child() {
    FORKED.store(true, Ordering::Relaxed);
    ENABLED.store(false, Ordering::Relaxed);
}

fn set_off(reason: &'static str) {
    *lock(&OFF_REASON) = Some(reason);
}

/// Patches `libc10.so` if it is loaded and not patched yet; true when the hook is in.
fn patch() -> bool {
    if PATCHED.load(Ordering::Acquire) {
        return true;
    }
    let Some(lib) = got::find_library(LIBRARY) else {
        set_off("torch is not imported yet");
        return false;
    };
    let slots = lib.slots(&["posix_memalign", "free"]);
    if !slots.iter().any(|s| s.which == 0) || !slots.iter().any(|s| s.which == 1) {
        set_off("libc10.so imports no posix_memalign or no free");
        return false;
    }
    let hooks = [
        alloc::posix_memalign as *const () as usize,
        alloc::free as *const () as usize,
    ];
    // `free` first: a block the new posix_memalign hands out must never reach libc's free.
    for which in [1, 0] {
        for s in slots.iter().filter(|s| s.which == which) {
            if got::write_slot(s, hooks[which]).is_err() || got::read_slot(s) != hooks[which] {
                // A free hook without the allocation hook is harmless (it passes
                // everything on); stop before the allocation one.
                set_off("cannot write libc10.so's GOT");
                return false;
            }
        }
    }
    PATCHED.store(true, Ordering::Release);
    ENABLED.store(true, Ordering::Release);
    *lock(&OFF_REASON) = None;
    true
}

/// numpy's version as (major, minor), from `numpy.__version__`.
fn numpy_version(np: &Bound<'_, PyAny>) -> Option<(u32, u32)> {
    let v: String = np.getattr("__version__").ok()?.extract().ok()?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

/// Makes the heap numpy's allocation policy (NumPy >= 1.22; see [`crate::sys::numpy`])
/// when numpy is imported (never importing it), for every thread. True when it is set.
fn install_numpy(py: Python<'_>) -> bool {
    if NUMPY.load(Ordering::Acquire) {
        return true;
    }
    let Ok(modules) = py.import("sys").and_then(|m| m.getattr("modules")) else {
        return false;
    };
    let Ok(np) = modules.get_item("numpy") else {
        return false;
    };
    if numpy_version(&np).is_none_or(|v| v < (1, 22)) {
        return false;
    }
    let api = [
        "numpy._core._multiarray_umath",
        "numpy.core._multiarray_umath",
    ]
    .iter()
    .find_map(|m| modules.get_item(m).ok()?.getattr("_ARRAY_API").ok());
    let Some(api) = api else {
        return false;
    };
    if crate::sys::numpy::install(&api).is_err() {
        return false;
    }
    NUMPY.store(true, Ordering::Release);
    ENABLED.store(true, Ordering::Release);
    true
}

/// Turns the heap on for this worker's channel: reads `NODECELL_WORKER_HEAP` (`0`:
/// off) and `NODECELL_WORKER_HEAP_MIN` (bytes), and patches `libc10.so` now if torch
/// is imported (else when [`torch_imported`] is called). Returns whether it is on.
/// Only on a worker's channel without `frozen_outputs`; call it in the worker process
/// itself (after the fork from the zygote), once its channel is open.
#[pyfunction]
pub fn worker_heap(py: Python<'_>, channel: &PyChannel) -> PyResult<bool> {
    let ch = channel.ch()?;
    if std::env::var("NODECELL_WORKER_HEAP").is_ok_and(|v| v.trim() == "0") {
        set_off("NODECELL_WORKER_HEAP=0");
        return Ok(false);
    }
    if ch.side() != Side::Worker {
        set_off("not a worker");
        return Ok(false);
    }
    if ch.config().frozen_outputs {
        set_off("the channel takes frozen outputs");
        return Ok(false);
    }
    if let Ok(v) = std::env::var("NODECELL_WORKER_HEAP_MIN") {
        // The project's one size parser: `1048576`, `128KiB`, `1M`.
        let n = nodecell_units::parse_size(&v).map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!("NODECELL_WORKER_HEAP_MIN: {e}"))
        })?;
        MIN_BYTES.store(
            usize::try_from(n).unwrap_or(usize::MAX).max(PAGE),
            Ordering::Relaxed,
        );
    }
    if let Some(n) = crate::sys::open_files_limit() {
        MAX_ARENAS.store((n / 4).clamp(16, 1 << 20) as usize, Ordering::Relaxed);
    }
    *lock(&CHANNEL) = Some(ch.downgrade());
    static FORK_HANDLER: std::sync::Once = std::sync::Once::new();
    let mut handler = true;
    FORK_HANDLER.call_once(|| handler = alloc::on_fork_child(forked_child));
    if !handler {
        set_off("cannot register the fork handler");
        return Ok(false);
    }
    let torch = patch();
    let numpy = install_numpy(py);
    Ok(torch || numpy)
}

/// Installs the hook if the heap was asked for ([`worker_heap`]) and torch was not
/// imported then (numpy's policy too, in the calling thread's context); cheap when there
/// is nothing to do. Called once torch is seen.
pub(crate) fn torch_imported(py: Python<'_>) {
    if (PATCHED.load(Ordering::Acquire) && NUMPY.load(Ordering::Acquire))
        || FORKED.load(Ordering::Relaxed)
    {
        return;
    }
    if lock(&CHANNEL).is_some() {
        patch();
        install_numpy(py);
    }
}

/// The heap's counters: `installed` (libc10.so patched), `numpy` (numpy's allocation
/// policy set), `enabled`, `off_reason`,
/// `min_bytes`, `max_bytes`, `max_arenas`, `takes` / `taken_bytes` (blocks handed out), `frees`,
/// `live_blocks` / `live_bytes`, `fallbacks` (large requests served by libc),
/// `sent` / `sent_bytes` (heap blocks sent without a copy), `privatized` (mappings
/// made copy-on-write by a send), `copied` (blocks written after a send, copied).
#[pyfunction]
pub fn worker_heap_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("installed", PATCHED.load(Ordering::Acquire))?;
    d.set_item("numpy", NUMPY.load(Ordering::Acquire))?;
    d.set_item("enabled", ENABLED.load(Ordering::Acquire))?;
    d.set_item("off_reason", *lock(&OFF_REASON))?;
    d.set_item("min_bytes", min_bytes())?;
    d.set_item("max_bytes", MAX_BYTES)?;
    d.set_item("max_arenas", MAX_ARENAS.load(Ordering::Relaxed))?;
    d.set_item("takes", TAKES.load(Ordering::Relaxed))?;
    d.set_item("taken_bytes", TAKEN_BYTES.load(Ordering::Relaxed))?;
    d.set_item("frees", FREES.load(Ordering::Relaxed))?;
    d.set_item("live_blocks", LIVE.load(Ordering::Acquire))?;
    d.set_item("live_bytes", LIVE_BYTES.load(Ordering::Relaxed))?;
    d.set_item("fallbacks", FALLBACKS.load(Ordering::Relaxed))?;
    d.set_item("sent", SENT.load(Ordering::Relaxed))?;
    d.set_item("sent_bytes", SENT_BYTES.load(Ordering::Relaxed))?;
    d.set_item("privatized", PRIVATIZED.load(Ordering::Relaxed))?;
    d.set_item("copied", COPIED.load(Ordering::Relaxed))?;
    Ok(d)
}

/// Stops (`False`) or resumes (`True`) serving new allocations from the heap (blocks
/// already handed out stay valid and come back through `free`); resuming needs the
/// hook installed. Returns whether it serves now.
#[pyfunction]
pub fn set_worker_heap(on: bool) -> bool {
    let installed = PATCHED.load(Ordering::Acquire) || NUMPY.load(Ordering::Acquire);
    let on = on && installed && !FORKED.load(Ordering::Relaxed);
    ENABLED.store(on, Ordering::Release);
    on
}
