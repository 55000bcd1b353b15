//! Thin syscall wrappers: the only place in the crate that calls libc. Private to
//! the crate; the integration tests compile this same file into their own crate
//! (`tests/tests.rs`) to act as a raw peer.
//!
//! Every kernel call sits in a small function that returns `io::Result` (or a
//! plain value when the call cannot fail). Raw pointers into mappings leave this
//! module only inside [`Mapping`], which owns the mapping and unmaps it on drop.
#![allow(clippy::cast_possible_truncation)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

#[path = "sys/pagemap.rs"]
mod pagemap;

/// `F_SEAL_SEAL`: no more seals can be added.
pub const SEAL_SEAL: u32 = 0x0001;
/// `F_SEAL_SHRINK`: the file cannot shrink.
pub const SEAL_SHRINK: u32 = 0x0002;
/// `F_SEAL_GROW`: the file cannot grow.
pub const SEAL_GROW: u32 = 0x0004;
/// `F_SEAL_WRITE`: the contents can never change again.
pub const SEAL_WRITE: u32 = 0x0008;
/// `F_SEAL_FUTURE_WRITE`: no new writable shared mapping or `write(2)`; existing mappings keep working.
pub const SEAL_FUTURE_WRITE: u32 = 0x0010;

const MFD_CLOEXEC: u32 = 0x0001;
const MFD_ALLOW_SEALING: u32 = 0x0002;
const MFD_NOEXEC_SEAL: u32 = 0x0008;
const MADV_POPULATE_WRITE: i32 = 23;
const FUTEX_WAIT: i32 = 0;
const FUTEX_WAKE: i32 = 1;
/// futex2 flag: the futex word is 32 bits.
pub const FUTEX2_SIZE_U32: u32 = 0x02;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `MFD_NOEXEC_SEAL` was accepted by the last successful [`memfd_create`].
static NOEXEC_SEAL_WORKS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)`; falls back
/// to no `MFD_NOEXEC_SEAL` on kernels older than 6.3 (which reject it with EINVAL).
pub fn memfd_create(name: &str) -> io::Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let base = MFD_CLOEXEC | MFD_ALLOW_SEALING;
    if NOEXEC_SEAL_WORKS.load(Ordering::Relaxed) != 2 {
        // SAFETY: cname is a valid NUL-terminated string; the flags are plain integers.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), base | MFD_NOEXEC_SEAL) };
        if fd >= 0 {
            NOEXEC_SEAL_WORKS.store(1, Ordering::Relaxed);
            return owned(fd);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        NOEXEC_SEAL_WORKS.store(2, Ordering::Relaxed);
    }
    // SAFETY: as above.
    owned(unsafe { libc::memfd_create(cname.as_ptr(), base) })
}

/// Tries `memfd_create` with `MFD_NOEXEC_SEAL`; `Ok(true)` if the kernel knows the flag.
pub fn memfd_noexec_seal_supported() -> io::Result<bool> {
    let cname = CString::new("nodecell-probe").expect("no NUL");
    // SAFETY: valid string, integer flags.
    let fd = unsafe {
        libc::memfd_create(
            cname.as_ptr(),
            MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL,
        )
    };
    if fd >= 0 {
        drop(owned(fd)?);
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

/// What `fstat` says about a descriptor, reduced to what the channel checks.
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a regular file (memfds are).
    pub regular: bool,
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileInfo> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: st points to writable memory large enough for struct stat.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the struct (and it was zeroed before).
    let st = unsafe { st.assume_init() };
    Ok(FileInfo {
        size: st.st_size.max(0) as u64,
        regular: (st.st_mode & libc::S_IFMT) == libc::S_IFREG,
    })
}

/// `fcntl(fd, F_GET_SEALS)`; EINVAL means the file does not support seals (not a memfd).
pub fn get_seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: plain fcntl on a valid descriptor.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) }).map(|s| s as u32)
}

/// `fcntl(fd, F_ADD_SEALS, seals)`.
pub fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    // SAFETY: plain fcntl on a valid descriptor.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) }).map(drop)
}

/// `write(2)` until all of `buf` is written, at file offset `off` (`pwrite`).
pub fn pwrite_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let o = i64::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: buf is a valid readable slice of buf.len() bytes.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), o) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = &buf[n as usize..];
        off += n as u64;
    }
    Ok(())
}

/// How a [`Mapping`] may be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// `PROT_READ`, `MAP_SHARED`.
    ReadShared,
    /// `PROT_READ|PROT_WRITE`, `MAP_SHARED`.
    WriteShared,
    /// `PROT_READ|PROT_WRITE`, `MAP_PRIVATE` (copy-on-write: writes stay in this process).
    CopyOnWrite,
}

impl Protection {
    /// `(prot, flags)` for `mmap`.
    fn mmap_flags(self) -> (libc::c_int, libc::c_int) {
        match self {
            Protection::ReadShared => (libc::PROT_READ, libc::MAP_SHARED),
            Protection::WriteShared => (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED),
            Protection::CopyOnWrite => (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE),
        }
    }

    /// The variant stored as `self as u8`.
    fn from_index(i: u8) -> Protection {
        match i {
            0 => Protection::ReadShared,
            1 => Protection::WriteShared,
            _ => Protection::CopyOnWrite,
        }
    }
}

/// One `mmap` of a file, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Address space unmapped on drop from `ptr`: `len`, or for [`Mapping::map_alone`]
    /// the whole 2 MiB blocks it holds.
    reserved: usize,
    /// The [`Protection`] as its index (changed by [`Mapping::remap_in_place`]).
    prot: std::sync::atomic::AtomicU8,
    /// Copy-on-write only: found to hold no private pages when its last view went (see
    /// [`Mapping::mark_clean`]).
    clean: std::sync::atomic::AtomicBool,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through
// raw pointers whose users synchronize (atomics for shared words, copies for data).
unsafe impl Send for Mapping {}
// SAFETY: as above; &Mapping only hands out raw pointers and atomics.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0. `len` must be > 0.
    pub fn map(fd: BorrowedFd<'_>, len: usize, prot: Protection) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let (p, f) = prot.mmap_flags();
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) cannot alias Rust memory.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, p, f, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mapping {
            ptr,
            len,
            reserved: len,
            prot: std::sync::atomic::AtomicU8::new(prot as u8),
            clean: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Like [`Mapping::map`], but alone in the blocks of address space it starts in and
    /// ends in (the rest of its last block reserved: inaccessible, never faulted): 1 GiB
    /// blocks for a mapping of whole GiBs or nearly so (at most 1/16 of it left over),
    /// else 2 MiB blocks. No other mapping's pages then share its page tables, so a
    /// `PAGEMAP_SCAN` of its untouched bytes ([`Mapping::has_private_pages`]) skips them
    /// block by block instead of visiting every page's (or every 2 MiB's) empty entry (a
    /// 1 MiB copy-on-write view next to busy memory: ~480 ns a scan, alone ~215 ns here).
    /// When the address space cannot be reserved (an `RLIMIT_AS` near its end), it is a
    /// plain mapping.
    pub fn map_alone(fd: BorrowedFd<'_>, len: usize, prot: Protection) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let whole_gibs = len
            .checked_next_multiple_of(PUD_BLOCK)
            .filter(|&h| len >= PUD_BLOCK && h - len <= len / 16);
        let tries = [
            whole_gibs.map(|h| (h, PUD_BLOCK)),
            len.checked_next_multiple_of(PMD_BLOCK)
                .map(|h| (h, PMD_BLOCK)),
        ];
        for (held, block) in tries.into_iter().flatten() {
            let Ok(start) = reserve_aligned(held, block) else {
                continue;
            };
            let (p, f) = prot.mmap_flags();
            let (flags, raw_fd) = (f | libc::MAP_FIXED, fd.as_raw_fd());
            // SAFETY: MAP_FIXED over the start of `held` bytes this function just reserved
            // (owned by no one else): no other mapping or Rust object is replaced.
            let ptr = unsafe { libc::mmap(start.cast(), len, p, flags, raw_fd, 0) };
            if ptr == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                // SAFETY: the reservation made above, which nothing else refers to.
                unsafe { libc::munmap(start.cast(), held) };
                return Err(e);
            }
            let ptr = NonNull::new(ptr.cast::<u8>())
                .ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
            return Ok(Mapping {
                ptr,
                len,
                reserved: held,
                prot: std::sync::atomic::AtomicU8::new(prot as u8),
                clean: std::sync::atomic::AtomicBool::new(false),
            });
        }
        Mapping::map(fd, len, prot)
    }

    /// Records that this copy-on-write mapping held no private pages when checked with
    /// no view over it left (so the next view may reuse it without a scan).
    pub fn mark_clean(&self) {
        self.clean.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`Mapping::mark_clean`] was called since the last call; clears the mark
    /// (the caller is about to hand the mapping out again).
    pub fn take_clean(&self) -> bool {
        self.clean.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Start address.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (mappings are at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How it was mapped.
    pub fn protection(&self) -> Protection {
        Protection::from_index(self.prot.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Maps `fd` (offset 0, this mapping's length) again over this mapping's own
    /// addresses with `prot` (`MAP_FIXED`: the addresses stay valid throughout; the
    /// kernel swaps the pages under them). `populate` asks for the page tables to be
    /// filled at once (`MAP_POPULATE`). Used to turn a worker's writable-shared arena
    /// copy-on-write once its bytes were sent (the worker's later writes stay private)
    /// and shared again before the arena is reused. Bytes written through a
    /// copy-on-write mapping are dropped by the swap back to shared.
    pub fn remap_in_place(
        &self,
        fd: BorrowedFd<'_>,
        prot: Protection,
        populate: bool,
    ) -> io::Result<()> {
        let (p, f) = prot.mmap_flags();
        let f = f | libc::MAP_FIXED | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: MAP_FIXED over exactly this mapping's own range (which it owns and unmaps on
        // drop) with a file at least that long: no other mapping or Rust object is replaced.
        let ptr = unsafe { libc::mmap(self.ptr().cast(), self.len, p, f, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.prot
            .store(prot as u8, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// For a copy-on-write mapping: throws away this process's private copies of
    /// pages (`MADV_DONTNEED`), so every page reads the file's current contents
    /// again. Cheap for pages never touched.
    pub fn discard_private(&self) -> io::Result<()> {
        if self.protection() != Protection::CopyOnWrite {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: exactly this private (MAP_PRIVATE) mapping: MADV_DONTNEED only drops our copies;
        // the caller holds the only Arc, so no reference into it is in use.
        let r = unsafe { libc::madvise(self.ptr().cast(), self.len, libc::MADV_DONTNEED) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// For a copy-on-write mapping: whether any page overlapping `[off, off + len)`
    /// is this process's private copy (written since mapped or since the last
    /// [`Mapping::discard_private`]). Reads `/proc/self/pagemap`.
    pub fn has_private_pages(&self, off: usize, len: usize) -> io::Result<bool> {
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        pagemap::private_pages(self.ptr() as usize + off, len)
    }

    /// `madvise(MADV_HUGEPAGE)`; Ok(false) when the kernel refuses (no THP).
    pub fn advise_hugepage(&self) -> bool {
        // SAFETY: the range is exactly this mapping.
        unsafe { libc::madvise(self.ptr().cast(), self.len, libc::MADV_HUGEPAGE) == 0 }
    }

    /// Pre-faults the whole mapping for writing: `MADV_POPULATE_WRITE` where the
    /// kernel has it (5.14+), else touches one byte per page. Returns which way was used.
    pub fn prefault_write(&self) -> io::Result<Prefault> {
        // SAFETY: the range is exactly this mapping.
        let r = unsafe { libc::madvise(self.ptr().cast(), self.len, MADV_POPULATE_WRITE) };
        if r == 0 {
            return Ok(Prefault::PopulateWrite);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        if self.protection() == Protection::ReadShared {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let page = page_size();
        let mut off = 0;
        while off < self.len {
            // SAFETY: off < len, the mapping is writable (checked above), and a
            // volatile read-then-write of the same byte keeps its value.
            unsafe {
                let p = self.ptr().add(off);
                p.write_volatile(p.read_volatile());
            }
            off += page;
        }
        Ok(Prefault::Touched)
    }

    /// The 32-bit atomic at byte offset `off` (must be 4-aligned and in bounds).
    pub fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "atomic_u32 out of bounds"
        );
        // SAFETY: in bounds and aligned (asserted); the page is mapped for as long as
        // &self lives; AtomicU32 has the layout of u32 and all bit patterns are valid.
        unsafe { &*self.ptr().add(off).cast::<AtomicU32>() }
    }

    /// The 64-bit atomic at byte offset `off` (must be 8-aligned and in bounds).
    pub fn atomic_u64(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len,
            "atomic_u64 out of bounds"
        );
        // SAFETY: as in atomic_u32.
        unsafe { &*self.ptr().add(off).cast::<std::sync::atomic::AtomicU64>() }
    }

    /// Copies `dst.len()` bytes starting at `off` out of the mapping.
    ///
    /// The peer may write the same bytes at the same time; the copy then holds
    /// garbage, which the caller validates — it never reads the mapping twice.
    pub fn read_into(&self, off: usize, dst: &mut [u8]) {
        assert!(
            off.checked_add(dst.len()).is_some_and(|e| e <= self.len),
            "read_into out of bounds"
        );
        // SAFETY: the source range is inside the mapping (asserted) and dst is a
        // distinct, writable Rust slice; bytes have no invalid values.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr().add(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into the mapping at `off`. The mapping must be writable.
    pub fn write_from(&self, off: usize, src: &[u8]) {
        assert!(
            self.protection() != Protection::ReadShared,
            "write to a read-only mapping"
        );
        assert!(
            off.checked_add(src.len()).is_some_and(|e| e <= self.len),
            "write_from out of bounds"
        );
        let dst = self.ptr() as usize + off;
        let threads = copy_threads(src.len());
        if threads <= 1 {
            // SAFETY: the destination range is inside a writable mapping (asserted) and
            // cannot overlap the Rust slice src.
            unsafe { copy_to_mapping(dst as *mut u8, src.as_ptr(), src.len()) };
            return;
        }
        // A large copy in page-aligned parts, one per thread: one core's copy bandwidth
        // is well below the machine's, and the peer waits for the bytes meanwhile.
        let part = src.len().div_ceil(threads).next_multiple_of(PAGE_GRAIN);
        std::thread::scope(|s| {
            let mut parts = src.chunks(part).enumerate();
            let first = parts.next();
            for (i, chunk) in parts {
                let d = dst + i * part;
                // SAFETY: each part's destination is a disjoint piece of the asserted
                // writable range; the mapping outlives the scope (borrowed by `self`).
                s.spawn(move || unsafe {
                    copy_to_mapping(d as *mut u8, chunk.as_ptr(), chunk.len())
                });
            }
            if let Some((_, chunk)) = first {
                // SAFETY: as above, the first part.
                unsafe { copy_to_mapping(dst as *mut u8, chunk.as_ptr(), chunk.len()) };
            }
        });
    }

    /// The mapping as a byte slice.
    ///
    /// # Safety
    /// No one may write the mapped bytes while the slice lives: the file must be
    /// sealed against writes (`F_SEAL_WRITE`), or written only by this process.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the caller guarantees the bytes do not change; the range is the mapping.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
}

/// Copies of at least this many bytes into a mapping stream past this CPU's caches
/// (non-temporal stores, x86-64 with AVX2): the bytes are for another process, and a
/// streaming store does not read each destination line first. 64 MiB from fresh 4 KiB
/// pages into a pre-faulted memfd on the development VM: 9.2 ms with `memcpy`, 7.1 ms
/// streaming; 12 MiB 1.31 vs 1.02 ms. Smaller copies stay cached for the reader.
pub const STREAM_MIN: usize = 8 << 20;

/// Copies of at least this many bytes into a mapping are split across threads.
pub const PARALLEL_COPY_MIN: usize = 8 << 20;
/// The most threads one copy uses.
const MAX_COPY_THREADS: usize = 4;
/// Parts of a split copy start at multiples of this (no page is written by two threads).
const PAGE_GRAIN: usize = 4096;

/// How many threads copy `len` bytes: 1 below [`PARALLEL_COPY_MIN`], else one per CPU
/// this process may run on, at most [`MAX_COPY_THREADS`] (and never parts under 4 MiB).
fn copy_threads(len: usize) -> usize {
    if len < PARALLEL_COPY_MIN {
        return 1;
    }
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    cpus.min(MAX_COPY_THREADS).min(len / (4 << 20)).max(1)
}

/// Copies `len` bytes from `src` to `dst`, streaming when `len >= STREAM_MIN` and the
/// CPU has AVX2; all stores are complete (fenced) on return.
///
/// # Safety
/// `src` must be readable and `dst` writable for `len` bytes, and they must not overlap.
unsafe fn copy_to_mapping(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= STREAM_MIN && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the caller's guarantees, forwarded; AVX2 is present (checked).
        unsafe { stream_avx2(dst, src, len) };
        return;
    }
    // SAFETY: the caller's guarantees, forwarded.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// [`copy_to_mapping`]'s streaming copy: 32-byte aligned non-temporal stores of 128
/// bytes per step, the unaligned head and the tail copied plainly, then `sfence` (the
/// streamed bytes are visible before anything this thread stores afterwards, e.g. the
/// ring entry naming them).
///
/// # Safety
/// As [`copy_to_mapping`], and the CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_avx2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};
    let head = dst.align_offset(32).min(len);
    // SAFETY: [0, head) is inside both ranges (head <= len).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i + 128 <= len {
        // SAFETY: [i, i + 128) is inside both ranges; dst + i is 32-byte aligned (head
        // aligned it and steps are multiples of 32); unaligned loads need no alignment.
        unsafe {
            let s = src.add(i).cast::<__m256i>();
            let d = dst.add(i).cast::<__m256i>();
            let a = _mm256_loadu_si256(s);
            let b = _mm256_loadu_si256(s.add(1));
            let c = _mm256_loadu_si256(s.add(2));
            let e = _mm256_loadu_si256(s.add(3));
            _mm256_stream_si256(d, a);
            _mm256_stream_si256(d.add(1), b);
            _mm256_stream_si256(d.add(2), c);
            _mm256_stream_si256(d.add(3), e);
        }
        i += 128;
    }
    // SAFETY: [i, len) is inside both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i) };
    _mm_sfence();
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping and nothing refers to it after drop.
        unsafe { libc::munmap(self.ptr().cast(), self.reserved) };
    }
}

/// The address space one page-table page (one page-middle-directory entry) covers with
/// 4 KiB pages: 2 MiB.
const PMD_BLOCK: usize = 2 << 20;

/// The address space one page-upper-directory entry covers: 1 GiB.
const PUD_BLOCK: usize = 1 << 30;

/// Reserves `len` bytes (a multiple of `align`, a power of two) of inaccessible address
/// space starting on an `align` boundary; returns its start. The caller owns it (and
/// unmaps it).
fn reserve_aligned(len: usize, align: usize) -> io::Result<*mut u8> {
    let over = len
        .checked_add(align)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh PROT_NONE mapping chosen by the kernel (addr NULL) cannot alias Rust memory.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), over, libc::PROT_NONE, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let raw = raw as usize;
    let start = raw.next_multiple_of(align);
    let (head, tail) = (start - raw, raw + over - (start + len));
    // SAFETY: both ranges lie inside the reservation just made, outside [start, start + len):
    // nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    Ok(start as *mut u8)
}

/// How [`Mapping::prefault_write`] faulted the pages in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefault {
    /// `MADV_POPULATE_WRITE` (one syscall).
    PopulateWrite,
    /// Touched one byte per page (kernels before 5.14).
    Touched,
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// `sched_getcpu()`: the CPU the calling thread runs on now (a vDSO/rseq read, no
/// syscall on this kernel); None where the kernel cannot tell.
pub fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let r = unsafe { libc::sched_getcpu() };
    u32::try_from(r).ok()
}

/// `futex(FUTEX_WAIT)` on a shared (non-private) word: sleeps while `*word == expected`,
/// at most `timeout`. Returns Ok on wake, EAGAIN (value changed), EINTR or ETIMEDOUT as errors.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: word is a valid aligned u32 for the duration of the call; tsp is null or
    // points to a live timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            FUTEX_WAIT,
            expected,
            tsp,
            0usize,
            0u32,
        )
    };
    cvt_long(r).map(drop)
}

/// `futex(FUTEX_WAKE)` on a shared word: wakes up to `n` waiters, returns how many woke.
pub fn futex_wake(word: &AtomicU32, n: i32) -> io::Result<usize> {
    // SAFETY: word is a valid aligned u32; FUTEX_WAKE does not dereference other args.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            FUTEX_WAKE,
            n,
            0usize,
            0usize,
            0u32,
        )
    };
    cvt_long(r).map(|n| n as usize)
}

/// One waiter for [`futex_waitv`], the kernel's `struct futex_waitv`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FutexWaitv {
    /// Expected value.
    pub val: u64,
    /// Address of the 32-bit word.
    pub uaddr: u64,
    /// futex2 flags (`FUTEX2_SIZE_U32`).
    pub flags: u32,
    /// Must be 0.
    pub reserved: u32,
}

impl FutexWaitv {
    /// A waiter on a shared 32-bit word.
    pub fn new(word: &AtomicU32, expected: u32) -> FutexWaitv {
        FutexWaitv {
            val: u64::from(expected),
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        }
    }
}

/// The `futex_waitv(2)` syscall (5.16+): sleeps until one of `waiters` is woken or
/// `timeout` (relative, CLOCK_MONOTONIC) passes. Returns the woken index.
///
/// Every `uaddr` must point to a live, mapped 32-bit word (callers build waiters
/// with [`FutexWaitv::new`] from words they keep mapped across the call).
pub fn futex_waitv(waiters: &[FutexWaitv], timeout: Option<Duration>) -> io::Result<usize> {
    let abs = timeout.map(|t| {
        let now = monotonic_now();
        let end = now + t;
        libc::timespec {
            tv_sec: end.as_secs() as libc::time_t,
            tv_nsec: end.subsec_nanos() as libc::c_long,
        }
    });
    let tsp = abs
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: waiters is a live array of repr(C) futex_waitv; tsp is null or live.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0u32,
            tsp,
            libc::CLOCK_MONOTONIC,
        )
    };
    cvt_long(r).map(|i| i as usize)
}

/// CLOCK_MONOTONIC now, as a Duration since boot.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// A connected `AF_UNIX`/`SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid out array of two ints.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok((owned(fds[0])?, owned(fds[1])?))
}

/// Sends one message with `data` and `fds` as SCM_RIGHTS (`MSG_NOSIGNAL|MSG_DONTWAIT`:
/// a full socket is `WouldBlock`, never a hang).
pub fn send_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let fd_bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to a zeroed buffer of CMSG_SPACE(fd_bytes) bytes,
        // so the first header and its data area are in bounds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    loop {
        // SAFETY: msg and everything it points to (iov, data, cbuf) are live.
        let n = unsafe {
            libc::sendmsg(
                sock.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            if n as usize != data.len() {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One message from [`recv_fds`].
#[derive(Debug)]
pub struct Received {
    /// Bytes of data (0 with no fds means the peer closed).
    pub len: usize,
    /// Descriptors that came with it (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The kernel cut the control data (`MSG_CTRUNC`): more descriptors were sent than fit.
    pub ctrunc: bool,
    /// The kernel cut the data (`MSG_TRUNC`).
    pub trunc: bool,
}

/// Receives one message without blocking (`MSG_DONTWAIT | MSG_CMSG_CLOEXEC`), with room
/// for at most `max_fds` descriptors. `Ok(None)` when nothing is queued.
pub fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<Option<Received>> {
    let fd_bytes = max_fds * std::mem::size_of::<RawFd>();
    // SAFETY: pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data, zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg points to live buffers sized as declared.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside msg_controllen as the kernel filled it; each
    // SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors, now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..count {
                    let fd = data.add(i).read_unaligned();
                    if fd >= 0 {
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some(Received {
        len: n,
        fds,
        ctrunc: msg.msg_flags & libc::MSG_CTRUNC != 0,
        trunc: msg.msg_flags & libc::MSG_TRUNC != 0,
    }))
}

/// `poll` on one descriptor for `events`, waiting at most `timeout_ms` (-1: forever).
/// Returns the revents (0 on timeout).
pub fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: p is one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(if r == 0 { 0 } else { p.revents });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `poll` on many descriptors; fills `revents` (same length as `fds`). Returns how many fired.
pub fn poll_many(
    fds: &[(BorrowedFd<'_>, i16)],
    revents: &mut [i16],
    timeout_ms: i32,
) -> io::Result<usize> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|(f, e)| libc::pollfd {
            fd: f.as_raw_fd(),
            events: *e,
            revents: 0,
        })
        .collect();
    let r = loop {
        // SAFETY: p is a valid array of p.len() pollfds.
        let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    for (o, i) in revents.iter_mut().zip(p.iter()) {
        *o = i.revents;
    }
    Ok(r)
}

/// `POLLIN`.
pub const POLLIN: i16 = libc::POLLIN;
/// `POLLOUT`.
pub const POLLOUT: i16 = libc::POLLOUT;
/// `POLLHUP`.
pub const POLLHUP: i16 = libc::POLLHUP;
/// `POLLERR`.
pub const POLLERR: i16 = libc::POLLERR;
/// `POLLRDHUP`: the peer closed its end.
pub const POLLRDHUP: i16 = libc::POLLRDHUP;

/// `pidfd_open(pid, 0)` (5.3+).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    owned(cvt_long(r)? as libc::c_int)
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// Adds 1 to an eventfd (wakes `poll`/`add_reader` on it).
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if r == 8 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A full counter (EAGAIN) still means "readable": nothing is lost.
    if e.kind() == io::ErrorKind::WouldBlock {
        return Ok(());
    }
    Err(e)
}

/// Reads and resets an eventfd's counter; 0 when it was not signalled.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if r == 8 {
        return Ok(v);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        return Ok(0);
    }
    Err(e)
}

/// `dup(fd)` with close-on-exec.
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: plain fcntl on a valid descriptor.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })
}

/// Duplicates a descriptor known only by number (e.g. handed over by `pass_fds`);
/// fails with EBADF if it is not open. The original stays open.
pub fn dup_number(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor table; an invalid number is EBADF.
    owned(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })
}

/// Reads a small text file (used by the probe for sysfs).
pub fn read_small_file(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
}

/// This process's id.
pub fn getpid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() }
}

/// Sleeps for `d` (used by the fallback loop when no futex_waitv exists).
pub fn sleep(d: Duration) {
    std::thread::sleep(d)
}

/// `ENOSYS`, `EAGAIN`, ... for matching io::Errors.
pub mod errno {
    /// Function not implemented.
    pub const ENOSYS: i32 = libc::ENOSYS;
    /// Try again (futex value changed).
    pub const EAGAIN: i32 = libc::EAGAIN;
    /// Interrupted.
    pub const EINTR: i32 = libc::EINTR;
    /// Invalid argument.
    pub const EINVAL: i32 = libc::EINVAL;
    /// Timer expired (io_uring wait timeout).
    pub const ETIME: i32 = libc::ETIME;
    /// Operation canceled.
    pub const ECANCELED: i32 = libc::ECANCELED;
}
