//! Which pages of a private (copy-on-write) file mapping this process has written.
//!
//! A page written through a `MAP_PRIVATE` mapping becomes an anonymous copy; the
//! others still map the file. `PAGEMAP_SCAN` on `/proc/self/pagemap` (Linux 6.7+)
//! finds the first such page without reporting every page; older kernels get one
//! pagemap entry per page. The zero page and unreadable entries count as written
//! (the answer errs on the side of "written").

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `_IOWR('f', 16, struct pm_scan_arg)` (96 bytes).
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

#[repr(C)]
#[derive(Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// This process's `/proc/self/pagemap` (reopened after a fork: the file names the
/// process that opened it) and whether `PAGEMAP_SCAN` works on it.
struct Pagemap {
    /// The [`fork_generation`] it was opened in.
    generation: u64,
    /// The process that opened it (compared only when the generation is unknown).
    pid: i32,
    file: File,
    scan: bool,
}

static PAGEMAP: Mutex<Option<Pagemap>> = Mutex::new(None);

/// Bumped in the child of every `fork()` (a `pthread_atfork` handler): a cheaper
/// "is this still the process that opened the file" than a `getpid` syscall per scan.
/// (Processes started by exec begin with fresh statics.)
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The number of forks between this process and the one that first asked (see
/// [`FORK_GENERATION`]); registers the fork handler on first use.
fn fork_generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the child handler only bumps an atomic (async-signal-safe) and lives for the
        // process; on failure (ENOMEM) the generation is u64::MAX and callers compare pids.
        let r = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        if r != 0 {
            FORK_GENERATION.store(u64::MAX, Ordering::Relaxed);
        }
    });
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// Whether any page overlapping `[addr, addr + len)` of a private mapping holds this
/// process's own copy (written since mapped) or is swapped out.
pub(crate) fn private_pages(addr: usize, len: usize) -> io::Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    let page = super::page_size();
    let start = addr & !(page - 1);
    let end = addr
        .checked_add(len)
        .and_then(|e| e.checked_add(page - 1))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?
        & !(page - 1);
    let generation = fork_generation();
    let mut g = PAGEMAP.lock().unwrap_or_else(|e| e.into_inner());
    // Without the fork handler (u64::MAX), the pid tells (a syscall per scan).
    let stale = |p: &Pagemap| {
        p.generation != generation || (generation == u64::MAX && p.pid != super::getpid())
    };
    if g.as_ref().is_none_or(stale) {
        // In a fork child the file names the parent, and its fd may have been closed
        // since the fork (a child closing every inherited fd) and its number reused:
        // never close it from here.
        if let Some(stale) = g.take() {
            std::mem::forget(stale.file);
        }
        *g = Some(Pagemap {
            generation,
            pid: super::getpid(),
            file: File::open("/proc/self/pagemap")?,
            scan: true,
        });
    }
    let pm = g
        .as_mut()
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    if pm.scan {
        match scan(&pm.file, start, end) {
            Ok(found) => return Ok(found),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                pm.scan = false;
            }
            Err(e) => return Err(e),
        }
    }
    entries(&pm.file, start, end, page)
}

/// `PAGEMAP_SCAN` for one page that is present or swapped, and neither a file page
/// nor the zero page.
fn scan(file: &File, start: usize, end: usize) -> io::Result<bool> {
    let mut region = PageRegion::default();
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start: start as u64,
        end: end as u64,
        vec: std::ptr::addr_of_mut!(region) as u64,
        vec_len: 1,
        max_pages: 1,
        category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
        category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ..PmScanArg::default()
    };
    // SAFETY: `arg` is a sized pm_scan_arg whose `vec` points at one PageRegion on this stack
    // frame; the kernel writes at most `vec_len` regions there and `walk_end` in `arg`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN, std::ptr::addr_of_mut!(arg)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r > 0)
}

/// One pagemap entry per page (kernels before 6.7).
fn entries(file: &File, start: usize, end: usize, page: usize) -> io::Result<bool> {
    const CHUNK: usize = 4096;
    let mut buf = vec![0u8; CHUNK * 8];
    let mut p = start / page;
    let last = end / page;
    while p < last {
        let n = (last - p).min(CHUNK);
        let b = &mut buf[..n * 8];
        file.read_exact_at(b, (p * 8) as u64)?;
        for e in b.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(e);
            let v = u64::from_le_bytes(w);
            if v & PM_SWAP != 0 || (v & PM_PRESENT != 0 && v & PM_FILE == 0) {
                return Ok(true);
            }
        }
        p += n;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{self, Mapping, Protection};

    fn cow(len: usize) -> (std::os::fd::OwnedFd, Mapping) {
        let fd = sys::memfd_create("pagemap-test").unwrap();
        sys::ftruncate(std::os::fd::AsFd::as_fd(&fd), len as u64).unwrap();
        let w = Mapping::map(std::os::fd::AsFd::as_fd(&fd), len, Protection::WriteShared).unwrap();
        w.write_from(0, &vec![7u8; len]);
        let m = Mapping::map(std::os::fd::AsFd::as_fd(&fd), len, Protection::CopyOnWrite).unwrap();
        (fd, m)
    }

    #[test]
    fn reads_leave_no_private_pages_writes_do() {
        let page = sys::page_size();
        let (_fd, m) = cow(16 * page);
        let base = m.ptr() as usize;
        assert!(!private_pages(base, 16 * page).unwrap(), "untouched");
        let mut b = vec![0u8; 16 * page];
        m.read_into(0, &mut b);
        assert!(b.iter().all(|&x| x == 7));
        assert!(!private_pages(base, 16 * page).unwrap(), "read only");
        m.write_from(5 * page + 3, &[1]);
        assert!(private_pages(base, 16 * page).unwrap(), "written");
        assert!(
            private_pages(base + 5 * page + 100, 1).unwrap(),
            "the written page"
        );
        assert!(!private_pages(base, 5 * page).unwrap(), "pages before it");
        assert!(
            !private_pages(base + 6 * page, 10 * page).unwrap(),
            "pages after it"
        );
        m.discard_private().unwrap();
        assert!(!private_pages(base, 16 * page).unwrap(), "discarded");
    }

    /// The mappings of this process as `(start, end, permissions)` (`/proc/self/maps`).
    fn maps() -> Vec<(usize, usize, String)> {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (a, b) = f.next()?.split_once('-')?;
                let perms = f.next()?.to_string();
                Some((
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                    perms,
                ))
            })
            .collect()
    }

    #[test]
    fn a_mapping_alone_in_its_blocks_is_a_copy_on_write_view_and_goes_whole() {
        let page = sys::page_size();
        let len = 300 * page; // not a multiple of 2 MiB
        let fd = sys::memfd_create("pagemap-alone").unwrap();
        sys::ftruncate(std::os::fd::AsFd::as_fd(&fd), len as u64).unwrap();
        let w = Mapping::map(std::os::fd::AsFd::as_fd(&fd), len, Protection::WriteShared).unwrap();
        w.write_from(0, &vec![7u8; len]);
        let m = Mapping::map_alone(std::os::fd::AsFd::as_fd(&fd), len, Protection::CopyOnWrite)
            .unwrap();
        let base = m.ptr() as usize;
        assert_eq!(base % PMD_BLOCK_TEST, 0, "starts on a 2 MiB boundary");
        let mut b = vec![0u8; len];
        m.read_into(0, &mut b);
        assert!(b.iter().all(|&x| x == 7), "the file's bytes");
        assert!(!private_pages(base, len).unwrap(), "read only");
        m.write_from(len - 1, &[1]);
        assert!(private_pages(base, len).unwrap(), "written");
        w.read_into(len - 1, &mut b[..1]);
        assert_eq!(b[0], 7, "the write stayed in this process");
        // The rest of its block is reserved (inaccessible), and goes with it. (Adjacent
        // reservations may show as one line: look for one covering the rest.)
        let (rest, end) = (base + len, base + PMD_BLOCK_TEST);
        let reserved = || {
            maps()
                .iter()
                .any(|(a, b, p)| *a <= rest && end <= *b && p == "---p")
        };
        assert!(reserved(), "the rest of the block is reserved");
        drop(m);
        assert!(!reserved(), "unmapped with the view");
    }

    const PMD_BLOCK_TEST: usize = 2 << 20;

    #[test]
    fn a_mapping_of_whole_gibs_is_alone_in_its_gib_blocks() {
        let len = 1usize << 30; // sparse: nothing is written or read but one page
        let fd = sys::memfd_create("pagemap-alone-gib").unwrap();
        sys::ftruncate(std::os::fd::AsFd::as_fd(&fd), len as u64).unwrap();
        let m = Mapping::map_alone(std::os::fd::AsFd::as_fd(&fd), len, Protection::CopyOnWrite)
            .unwrap();
        let base = m.ptr() as usize;
        assert_eq!(base % (1 << 30), 0, "starts on a 1 GiB boundary");
        assert!(!private_pages(base, len).unwrap(), "untouched");
        m.write_from(len / 2, &[1]);
        assert!(private_pages(base, len).unwrap(), "one page written");
    }

    #[test]
    fn a_fork_child_reads_its_own_pagemap() {
        // The parent has the file open already; the child writes a page the parent never
        // wrote: only the child's own pagemap shows it.
        let page = sys::page_size();
        let (_fd, m) = cow(4 * page);
        let base = m.ptr() as usize;
        assert!(!private_pages(base, 4 * page).unwrap());
        // Held across the fork, so that no other test thread holds it then (the child
        // would inherit it locked): each process unlocks its own copy afterwards.
        let held = PAGEMAP.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child only writes memory, asks the kernel about it and `_exit`s,
        // never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        drop(held);
        if pid == 0 {
            m.write_from(2 * page, &[9]);
            let code = match private_pages(base, 4 * page) {
                Ok(true) => 0,
                _ => 1,
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child made above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child saw {status}"
        );
        assert!(
            !private_pages(base, 4 * page).unwrap(),
            "the parent wrote nothing"
        );
    }

    #[test]
    fn the_fallback_agrees() {
        let page = sys::page_size();
        let (_fd, m) = cow(8 * page);
        let base = m.ptr() as usize;
        let f = File::open("/proc/self/pagemap").unwrap();
        let mut b = vec![0u8; 8 * page];
        m.read_into(0, &mut b);
        assert!(!entries(&f, base, base + 8 * page, page).unwrap());
        m.write_from(7 * page, &[1]);
        assert!(entries(&f, base, base + 8 * page, page).unwrap());
        assert!(!entries(&f, base, base + 7 * page, page).unwrap());
    }
}
