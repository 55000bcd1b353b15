//! The fd wall: every fd above 2 is closed before the command runs, except
//! the ones the caller keeps with `--keep-fd` (which stay at the same
//! number and lose `FD_CLOEXEC`).

use std::io;
use std::os::fd::RawFd;

use crate::sys;

/// The inclusive ranges of fds to close so that only 0-2 and `keep`
/// survive.
pub fn close_ranges(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep.iter().filter(|&&f| f > 2).map(|&f| f as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut next = 3u32;
    for k in keep {
        if k > next {
            ranges.push((next, k - 1));
        }
        next = k + 1;
    }
    ranges.push((next, u32::MAX));
    ranges
}

/// Closes every fd above 2 except `keep`.
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    for (first, last) in close_ranges(keep) {
        sys::close_range(first, last)?;
    }
    Ok(())
}

/// Clears `FD_CLOEXEC` on the kept fds so they survive `execve`.
pub fn make_inheritable(keep: &[RawFd]) -> io::Result<()> {
    for &fd in keep {
        sys::set_cloexec(fd, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_kept_fds() {
        assert_eq!(close_ranges(&[]), vec![(3, u32::MAX)]);
        assert_eq!(close_ranges(&[5]), vec![(3, 4), (6, u32::MAX)]);
        assert_eq!(close_ranges(&[3, 4, 9, 4, 1]), vec![(5, 8), (10, u32::MAX)]);
        assert_eq!(close_ranges(&[3]), vec![(4, u32::MAX)]);
    }

    #[test]
    fn only_kept_fds_survive() {
        crate::testutil::in_child("fds::tests::only_kept_fds_survive", || {
            let (a, b) = sys::pipe_cloexec().unwrap();
            let (c, d) = sys::pipe_cloexec().unwrap();
            close_all_except(&[b, c]).unwrap();
            make_inheritable(&[b, c]).unwrap();
            assert!(!sys::fd_is_open(a) && !sys::fd_is_open(d));
            assert!(sys::fd_is_open(b) && sys::fd_is_open(c));
            assert!(sys::fd_is_open(0) && sys::fd_is_open(1) && sys::fd_is_open(2));
        });
    }
}
