//! Tensor storage: one memfd per storage ("arena").
//!
//! The owner creates an [`Arena`], which is mapped read-write in the owner, pre-faulted
//! (`MADV_POPULATE_WRITE` where the kernel has it) with `MADV_HUGEPAGE`, filled,
//! then sealed before its fd is shared:
//!
//! * [`Arena::seal_read_only`] (host inputs): `SHRINK|GROW|FUTURE_WRITE|SEAL`. The
//!   owner's existing mapping stays writable; nobody can ever map it writable-shared
//!   again, so receivers map it read-only or copy-on-write.
//! * [`Arena::seal_output`] (host output buffers): `SHRINK|GROW|SEAL`, no write seal:
//!   the worker may map it writable-shared and fill it.
//! * [`Arena::freeze`] (worker outputs on channels that want them immutable): unmaps
//!   the writable mapping, seals `WRITE|SHRINK|GROW|SEAL` (immutable), and maps it
//!   read-only again.
//! * [`Arena::seal_pooled`] (a worker's pooled outputs): `SHRINK|GROW|SEAL`. The owner
//!   keeps writing it and reuses it for later outputs once every descriptor naming it
//!   came back; receivers map it copy-on-write. See [`crate::pool`].
//!
//! A pooled arena may also be *lent* to this process's own code (the worker heap in
//! `pyshim`: torch's CPU allocator takes its large blocks from the pool, so outputs are
//! in shared memory from the start). Once such an arena's bytes are sent,
//! [`Arena::privatize`] remaps this process's mapping copy-on-write at the same
//! addresses: the worker's code keeps reading the same bytes, and what it writes later
//! stays in private pages no peer sees. [`crate::ArenaPool::take`] maps it shared
//! again ([`Arena::reshare`]) before reusing it.
//!
//! The receiver side is [`TensorView`]: a mapping of a received arena plus the
//! validated descriptor, with its address and length for numpy/torch to wrap.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::frame::TensorDesc;
use crate::sys::{self, Mapping, Prefault, Protection};

static NEXT_ARENA_ID: AtomicU64 = AtomicU64::new(1);

/// How an arena is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaState {
    /// Not shared yet: the owner is filling it.
    Open,
    /// `SHRINK|GROW|FUTURE_WRITE|SEAL`: receivers map it read-only.
    ReadOnly,
    /// `SHRINK|GROW|SEAL`: a writable output buffer for the peer.
    Output,
    /// `WRITE|SHRINK|GROW|SEAL`: immutable.
    Frozen,
    /// `SHRINK|GROW|SEAL`: a worker's pooled output arena, written by its owner only
    /// and reused once released; receivers map it copy-on-write.
    Pooled,
}

/// Errors from creating or sealing an arena.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaError {
    /// A syscall failed.
    #[error("{op}: {source}")]
    Io {
        /// what was being done
        op: &'static str,
        /// the error
        #[source]
        source: std::io::Error,
    },
    /// Sealing an arena that is already sealed.
    #[error("arena {id} is already sealed ({state:?})")]
    AlreadySealed {
        /// arena id
        id: u64,
        /// its state
        state: ArenaState,
    },
    /// Length 0.
    #[error("an arena cannot be empty")]
    Empty,
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> ArenaError {
    move |source| ArenaError::Io { op, source }
}

/// One tensor storage in its own memfd, owned by this process.
#[derive(Debug)]
pub struct Arena {
    id: u64,
    fd: OwnedFd,
    len: usize,
    /// None only while [`Arena::freeze`] swaps the writable mapping for a read-only one.
    map: Mutex<Option<Arc<Mapping>>>,
    state: Mutex<ArenaState>,
    prefault: Option<Prefault>,
    hugepage: bool,
    /// Id of the channel whose pool holds this arena (0: not pooled).
    pool_owner: AtomicU64,
    /// Set once the arena was shared on a channel other than `pool_owner`: its
    /// bytes were seen by another peer, so the pool must never recycle it.
    foreign: AtomicBool,
    /// Lent to this process's own code (see [`Arena::set_lent`]).
    lent: AtomicBool,
}

impl Arena {
    /// Creates an arena of `len` bytes, mapped read-write here, pre-faulted, with
    /// `MADV_HUGEPAGE` requested first.
    pub fn create(len: usize) -> Result<Arc<Arena>, ArenaError> {
        Arena::create_with(len, true)
    }

    /// Like [`Arena::create`]; `prefault: false` skips pre-faulting (pages then fault
    /// on first touch).
    pub fn create_with(len: usize, prefault: bool) -> Result<Arc<Arena>, ArenaError> {
        if len == 0 {
            return Err(ArenaError::Empty);
        }
        let fd = sys::memfd_create("nodecell-arena").map_err(io("memfd_create"))?;
        sys::ftruncate(fd.as_fd(), len as u64).map_err(io("ftruncate arena"))?;
        let map =
            Mapping::map(fd.as_fd(), len, Protection::WriteShared).map_err(io("mmap arena"))?;
        let hugepage = map.advise_hugepage();
        let prefault = if prefault {
            Some(map.prefault_write().map_err(io("prefault arena"))?)
        } else {
            None
        };
        Ok(Arc::new(Arena {
            id: NEXT_ARENA_ID.fetch_add(1, Ordering::Relaxed),
            fd,
            len,
            map: Mutex::new(Some(Arc::new(map))),
            state: Mutex::new(ArenaState::Open),
            prefault,
            hugepage,
            pool_owner: AtomicU64::new(0),
            foreign: AtomicBool::new(false),
            lent: AtomicBool::new(false),
        }))
    }

    /// Process-unique id (not the wire slot id; see [`crate::Channel::share`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (arenas are never empty); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Address of this process's mapping (read-write unless frozen); null only if
    /// the arena could not be mapped again after a failed [`Arena::freeze`].
    pub fn as_ptr(&self) -> *mut u8 {
        self.mapping().map_or(std::ptr::null_mut(), |m| m.ptr())
    }

    /// This process's mapping (kept alive while the returned Arc lives).
    pub fn mapping(&self) -> Option<Arc<Mapping>> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_none() {
            *m = Mapping::map(self.fd.as_fd(), self.len, Protection::ReadShared)
                .ok()
                .map(Arc::new);
        }
        m.clone()
    }

    /// Copies `src` into the arena at `off` (only while the owner can still write:
    /// not after [`Arena::freeze`]).
    pub fn write(&self, off: usize, src: &[u8]) -> Result<(), ArenaError> {
        let Some(m) = self.mapping() else {
            return Err(ArenaError::AlreadySealed {
                id: self.id,
                state: self.state(),
            });
        };
        if m.protection() != Protection::WriteShared {
            // Read-only (frozen), or copy-on-write (privatized): a write would not reach
            // the memfd, so no peer would see it.
            return Err(ArenaError::AlreadySealed {
                id: self.id,
                state: self.state(),
            });
        }
        if off.checked_add(src.len()).is_none_or(|e| e > self.len) {
            return Err(io("write arena")(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )));
        }
        m.write_from(off, src);
        Ok(())
    }

    /// Copies `dst.len()` bytes at `off` out of the arena.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<(), ArenaError> {
        if off.checked_add(dst.len()).is_none_or(|e| e > self.len) {
            return Err(io("read arena")(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )));
        }
        match self.mapping() {
            Some(m) => {
                m.read_into(off, dst);
                Ok(())
            }
            None => Err(io("read arena")(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            ))),
        }
    }

    /// The seal state.
    pub fn state(&self) -> ArenaState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the pages were pre-faulted (None: not pre-faulted).
    pub fn prefault(&self) -> Option<Prefault> {
        self.prefault
    }

    /// Whether `MADV_HUGEPAGE` was accepted.
    pub fn hugepage_advised(&self) -> bool {
        self.hugepage
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn seal(&self, seals: u32, to: ArenaState) -> Result<(), ArenaError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *st != ArenaState::Open {
            return Err(ArenaError::AlreadySealed {
                id: self.id,
                state: *st,
            });
        }
        sys::add_seals(self.fd.as_fd(), seals).map_err(io("seal arena"))?;
        *st = to;
        Ok(())
    }

    /// Seals `SHRINK|GROW|FUTURE_WRITE|SEAL`: an input the peer can only read.
    /// On kernels without `F_SEAL_FUTURE_WRITE` (< 5.1) this falls back to
    /// [`Arena::freeze`] (the owner can no longer write either).
    pub fn seal_read_only(&self) -> Result<(), ArenaError> {
        match self.seal(
            sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_FUTURE_WRITE | sys::SEAL_SEAL,
            ArenaState::ReadOnly,
        ) {
            Err(ArenaError::Io { source, .. })
                if source.raw_os_error() == Some(sys::errno::EINVAL) =>
            {
                self.freeze()
            }
            r => r,
        }
    }

    /// Seals `SHRINK|GROW|SEAL` for a worker's pooled outputs: this process keeps its
    /// writable mapping and reuses the arena; peers map it copy-on-write.
    pub fn seal_pooled(&self) -> Result<(), ArenaError> {
        self.seal(
            sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL,
            ArenaState::Pooled,
        )
    }

    /// Marks the arena as held by the pool of channel `channel_id` (see [`crate::pool`]).
    pub(crate) fn set_pool_owner(&self, channel_id: u64) {
        self.pool_owner.store(channel_id, Ordering::Relaxed);
    }

    /// The channel whose pool holds this arena (None: not pooled).
    pub fn pool_owner(&self) -> Option<u64> {
        match self.pool_owner.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// Called when the arena is shared on channel `channel_id`: true when that channel
    /// owns the pool holding it (its slot may stay pinned), false otherwise; a pooled
    /// arena shared on any other channel is marked foreign and never recycled.
    pub fn pin_for(&self, channel_id: u64) -> bool {
        match self.pool_owner() {
            None => false,
            Some(owner) if owner == channel_id => true,
            Some(_) => {
                self.foreign.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether a peer other than the pool's owner has seen this arena.
    pub fn is_foreign(&self) -> bool {
        self.foreign.load(Ordering::Relaxed)
    }

    /// Marks the arena as lent to this process's own code (a tensor of the worker's
    /// lives in it: the worker heap) or given back. A lent arena is remapped
    /// copy-on-write when its bytes are sent ([`Arena::privatize`]).
    pub fn set_lent(&self, lent: bool) {
        self.lent.store(lent, Ordering::Release);
    }

    /// Whether this process's own code holds memory in the arena (see [`Arena::set_lent`]).
    pub fn is_lent(&self) -> bool {
        self.lent.load(Ordering::Acquire)
    }

    /// Whether this process's mapping is copy-on-write (see [`Arena::privatize`]).
    pub fn is_private(&self) -> bool {
        self.mapping()
            .is_some_and(|m| m.protection() == Protection::CopyOnWrite)
    }

    /// Remaps this process's writable-shared mapping copy-on-write at the same addresses
    /// (`mmap(MAP_PRIVATE|MAP_FIXED)` of the same memfd): the bytes read stay the same,
    /// later writes here go to private pages the peers never see. Ok(false) when it
    /// already was (or is read-only). For a pooled arena lent to local code whose bytes
    /// were just sent.
    pub fn privatize(&self) -> Result<bool, ArenaError> {
        let Some(m) = self.mapping() else {
            return Ok(false);
        };
        if m.protection() != Protection::WriteShared {
            return Ok(false);
        }
        m.remap_in_place(self.fd.as_fd(), Protection::CopyOnWrite, false)
            .map_err(io("mmap arena copy-on-write"))?;
        Ok(true)
    }

    /// Undoes [`Arena::privatize`]: maps the memfd writable-shared again at the same
    /// addresses (pre-faulted), dropping the private pages; Ok(false) when the mapping was
    /// not copy-on-write. Only for an arena nothing here uses any more (the pool calls
    /// it before reusing one): bytes written since the privatize are gone.
    pub fn reshare(&self) -> Result<bool, ArenaError> {
        let Some(m) = self.mapping() else {
            return Ok(false);
        };
        if m.protection() != Protection::CopyOnWrite {
            return Ok(false);
        }
        m.remap_in_place(self.fd.as_fd(), Protection::WriteShared, true)
            .map_err(io("mmap arena shared"))?;
        Ok(true)
    }

    /// Whether this process wrote into the arena since [`Arena::privatize`] (its
    /// copy-on-write mapping holds private pages overlapping `[off, off + len)`; an
    /// unreadable page map counts as written). False for a shared mapping.
    pub fn written_privately(&self, off: usize, len: usize) -> bool {
        match self.mapping() {
            Some(m) if m.protection() == Protection::CopyOnWrite => {
                m.has_private_pages(off, len).unwrap_or(true)
            }
            _ => false,
        }
    }

    /// Seals `SHRINK|GROW|SEAL`: an output buffer the peer may write.
    pub fn seal_output(&self) -> Result<(), ArenaError> {
        self.seal(
            sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL,
            ArenaState::Output,
        )
    }

    /// Makes the arena immutable: drops the writable mapping, seals
    /// `WRITE|SHRINK|GROW|SEAL`, maps it read-only. Fails with EBUSY while another
    /// writable shared mapping of it exists (e.g. a [`TensorView`] of an output buffer).
    pub fn freeze(&self) -> Result<(), ArenaError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *st != ArenaState::Open {
            return Err(ArenaError::AlreadySealed {
                id: self.id,
                state: *st,
            });
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Unmap the writable mapping (unless someone still holds it: then EBUSY below).
        // Even a read-only MAP_SHARED mapping made before the seal would count as
        // writable (VM_MAYWRITE), so the read-only one is made after sealing.
        let old = map.take();
        drop(old);
        let sealed = sys::add_seals(
            self.fd.as_fd(),
            sys::SEAL_WRITE | sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL,
        );
        let prot = if sealed.is_ok() {
            Protection::ReadShared
        } else {
            Protection::WriteShared
        };
        *map = Some(Arc::new(
            Mapping::map(self.fd.as_fd(), self.len, prot).map_err(io("mmap arena"))?,
        ));
        sealed.map_err(io("seal arena F_SEAL_WRITE"))?;
        *st = ArenaState::Frozen;
        Ok(())
    }
}

/// A received tensor: a mapping of the peer's arena and the validated descriptor.
///
/// The mapping stays valid while the view lives, even after the arena is retired.
/// Reading through [`TensorView::as_ptr`] is the zero-copy path for numpy/torch.
#[derive(Debug, Clone)]
pub struct TensorView {
    map: Arc<Mapping>,
    desc: TensorDesc,
}

impl Drop for TensorView {
    /// The last view over a cached copy-on-write mapping (the channel's cache holds the
    /// other reference) checks for private pages now, after the call that used it, so
    /// the next receive of that arena reuses the mapping without a scan on its path.
    /// Only a "clean" mark is left (never a discard: the other reference might be a
    /// clone of this view rather than the cache).
    fn drop(&mut self) {
        if self.map.protection() == Protection::CopyOnWrite
            && Arc::strong_count(&self.map) == 2
            && matches!(self.map.has_private_pages(0, self.map.len()), Ok(false))
        {
            self.map.mark_clean();
        }
    }
}

impl TensorView {
    pub(crate) fn new(map: Arc<Mapping>, desc: TensorDesc) -> TensorView {
        TensorView { map, desc }
    }

    /// The descriptor (validated against the arena's sealed size).
    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }

    /// Address of element [0,..,0].
    pub fn as_ptr(&self) -> *const u8 {
        // validate_in proved offset + nbytes <= mapping length.
        self.map.ptr().wrapping_add(self.desc.offset as usize)
    }

    /// Writable address of element [0,..,0] — only for copy-on-write views and
    /// output buffers; None otherwise.
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        match self.map.protection() {
            Protection::ReadShared => None,
            _ => Some(self.map.ptr().wrapping_add(self.desc.offset as usize)),
        }
    }

    /// Bytes from [`TensorView::as_ptr`] that the view may touch.
    pub fn len(&self) -> usize {
        self.desc.nbytes as usize
    }

    /// Whether the view has no bytes.
    pub fn is_empty(&self) -> bool {
        self.desc.nbytes == 0
    }

    /// Whether writes through this view are allowed.
    pub fn writable(&self) -> bool {
        self.map.protection() != Protection::ReadShared
    }

    /// How it is mapped.
    pub fn protection(&self) -> Protection {
        self.map.protection()
    }

    /// Whether this process wrote into `[off, off + len)` of the view (bytes from
    /// [`TensorView::as_ptr`]) through its copy-on-write mapping: those pages are
    /// private copies now, so the owner's arena no longer holds what this process
    /// sees there, and echoing the descriptor back would send stale bytes. Always
    /// false for shared mappings. Errors are reported as "written" (the safe answer).
    pub fn written_locally(&self, off: u64, len: u64) -> bool {
        if self.map.protection() != Protection::CopyOnWrite || len == 0 {
            return false;
        }
        let start = self.desc.offset.checked_add(off);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.map.len() as u64 => self
                .map
                .has_private_pages(s as usize, (e - s) as usize)
                .unwrap_or(true),
            _ => true,
        }
    }

    /// Copies `dst.len()` bytes starting `off` bytes into the view.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        match off.checked_add(dst.len()) {
            Some(e) if e <= self.len() => {
                self.map.read_into(self.desc.offset as usize + off, dst);
                true
            }
            _ => false,
        }
    }

    /// Copies `src` into the view at `off` (writable views only).
    pub fn write(&self, off: usize, src: &[u8]) -> bool {
        match off.checked_add(src.len()) {
            Some(e) if e <= self.len() && self.writable() => {
                self.map.write_from(self.desc.offset as usize + off, src);
                true
            }
            _ => false,
        }
    }
}
