//! Per-cell host identities (root launchers): every running cell gets its own
//! unprivileged host uid, and the gid of the same number, from a pool, so
//! cells cannot read or plant files for each other even through a directory
//! both were given.
//!
//! The default pool is [`DEFAULT_POOL`]: `1879048192` (`0x70000000`) and the
//! 65536 ids after it, a range that systemd documents as unused
//! (`docs/UIDS-GIDS.md`: after the `systemd-nspawn` container ranges, below
//! the "foreign" range) and that `useradd` never hands out. `--uid-pool
//! FIRST:COUNT` picks another. Every launch checks its pool against
//! `/etc/passwd`, `/etc/group`, `/etc/subuid` and `/etc/subgid` and refuses
//! one that overlaps a host account or a subordinate range, naming the file
//! and line.
//!
//! Leases: a cell holds an open-file-description lock on the bytes
//! `[uid, uid + count)` of [`LEASE_FILE`] for as long as its launcher runs;
//! the kernel drops it when the launcher exits, however it exits. A new cell
//! starts its search at a random slot so a uid is rarely reused right away.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::policy::PolicyError;
use crate::sys;

/// A range of host uids (and the gids of the same numbers) for cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UidPool {
    /// First uid of the pool.
    pub first: u32,
    /// Number of uids.
    pub count: u32,
}

/// The default pool: 65536 ids from `0x70000000`.
pub const DEFAULT_POOL: UidPool = UidPool {
    first: 0x7000_0000,
    count: 65536,
};

/// Where leases are locked (a root-owned directory, mode 0700).
pub const LEASE_FILE: &str = "/run/nodecell/uid-leases";

impl UidPool {
    /// The last uid of the pool.
    pub fn last(&self) -> u32 {
        self.first + (self.count - 1)
    }

    /// Checks the numbers alone: not empty, no uid 0, no overflow, nothing
    /// at or above `u32::MAX - 1` (the invalid ids), and not `nobody`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let shown = format!("{}:{}", self.first, self.count);
        let bad = |why: &str| Err(PolicyError::new("--uid-pool", &shown, why));
        if self.count == 0 {
            return bad("the pool is empty");
        }
        if self.first == 0 {
            return bad("uid 0 is never a worker's");
        }
        match self.first.checked_add(self.count - 1) {
            Some(last) if last < u32::MAX - 1 => {}
            _ => return bad("the pool runs past the largest valid uid (4294967293)"),
        }
        if (self.first..=self.last()).contains(&65534) {
            return bad("the pool contains 65534 (nobody), which every unmapped id shows as");
        }
        Ok(())
    }
}

impl FromStr for UidPool {
    type Err = PolicyError;
    /// `FIRST:COUNT`.
    fn from_str(s: &str) -> Result<UidPool, PolicyError> {
        let err = |why: &str| PolicyError::new("--uid-pool", s, why);
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| err("expected FIRST:COUNT, e.g. 1879048192:65536"))?;
        let first = a
            .trim()
            .parse::<u32>()
            .map_err(|_| err("FIRST is not a uid"))?;
        let count = b
            .trim()
            .parse::<u32>()
            .map_err(|_| err("COUNT is not a number"))?;
        let pool = UidPool { first, count };
        pool.validate()?;
        Ok(pool)
    }
}

impl std::fmt::Display for UidPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.first, self.count)
    }
}

/// Why no identity could be leased.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UidError {
    /// The pool overlaps an id the host already uses.
    #[error("--uid-pool {pool}: {file}:{line}: {what} lies inside the pool; pick a range no account or subordinate range uses")]
    Overlap {
        /// The pool.
        pool: UidPool,
        /// The host file.
        file: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// What was found.
        what: String,
    },
    /// Every block of the pool is in use by a running cell.
    #[error(
        "--uid-pool {pool}: all {blocks} blocks of {count} uid(s) are leased by running cells"
    )]
    Exhausted {
        /// The pool.
        pool: UidPool,
        /// Blocks in the pool.
        blocks: u32,
        /// Uids per cell.
        count: u32,
    },
    /// The lease file could not be used.
    #[error("{path}: {source}")]
    Lease {
        /// The file or directory.
        path: PathBuf,
        /// The errno.
        source: std::io::Error,
    },
}

/// `count` consecutive uids (and gids) held by this launcher.
#[derive(Debug)]
pub struct UidLease {
    /// First uid (and gid).
    pub first: u32,
    /// Number of ids.
    pub count: u32,
    /// Holds the lock; `None` for an explicit `--worker-uid`.
    _lock: Option<OwnedFd>,
}

impl UidLease {
    /// An explicit identity (`--worker-uid`): not locked, the caller chose it.
    pub fn explicit(first: u32, count: u32) -> UidLease {
        UidLease {
            first,
            count,
            _lock: None,
        }
    }
}

/// Finds host ids inside `pool` in the account and subordinate-id files.
pub fn check_host_files(pool: &UidPool) -> Result<(), UidError> {
    check_files(
        pool,
        &[
            (Path::new("/etc/passwd"), Kind::Account),
            (Path::new("/etc/group"), Kind::Account),
            (Path::new("/etc/subuid"), Kind::Subordinate),
            (Path::new("/etc/subgid"), Kind::Subordinate),
        ],
    )
}

/// How ids appear in a file.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `name:x:ID:...` (passwd, group).
    Account,
    /// `name:FIRST:COUNT` (subuid, subgid).
    Subordinate,
}

fn check_files(pool: &UidPool, files: &[(&Path, Kind)]) -> Result<(), UidError> {
    for &(file, kind) in files {
        // A file that does not exist holds no ids.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split(':').collect();
            let hit = match kind {
                Kind::Account => f
                    .get(2)
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|id| (pool.first..=pool.last()).contains(id))
                    .map(|id| format!("{} (id {id})", f[0])),
                Kind::Subordinate => {
                    let first = f.get(1).and_then(|v| v.parse::<u64>().ok());
                    let n = f.get(2).and_then(|v| v.parse::<u64>().ok());
                    match (first, n) {
                        (Some(a), Some(n)) if n > 0 => {
                            let b = a + n - 1;
                            (a <= pool.last() as u64 && b >= pool.first as u64)
                                .then(|| format!("{}'s range {a}-{b}", f[0]))
                        }
                        _ => None,
                    }
                }
            };
            if let Some(what) = hit {
                return Err(UidError::Overlap {
                    pool: *pool,
                    file: file.to_path_buf(),
                    line: i + 1,
                    what,
                });
            }
        }
    }
    Ok(())
}

/// Leases `count` consecutive ids from `pool` for this launcher.
pub fn lease(pool: &UidPool, count: u32) -> Result<UidLease, UidError> {
    check_host_files(pool)?;
    lease_in(pool, count, Path::new(LEASE_FILE))
}

fn lease_in(pool: &UidPool, count: u32, file: &Path) -> Result<UidLease, UidError> {
    let lease_err = |path: &Path, source| UidError::Lease {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = file.parent() {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| lease_err(dir, e))?;
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| lease_err(dir, e))?;
        }
    }
    let fd = sys::open_rw_create(file, 0o600).map_err(|e| lease_err(file, e))?;
    let count = count.max(1);
    let blocks = pool.count / count;
    if blocks == 0 {
        return Err(UidError::Exhausted {
            pool: *pool,
            blocks,
            count,
        });
    }
    let start = random_below(blocks);
    for k in 0..blocks {
        let first = pool.first + ((start + k) % blocks) * count;
        if sys::try_lock_range(fd.as_raw_fd(), first as u64, count as u64)
            .map_err(|e| lease_err(file, e))?
        {
            return Ok(UidLease {
                first,
                count,
                _lock: Some(fd),
            });
        }
    }
    Err(UidError::Exhausted {
        pool: *pool,
        blocks,
        count,
    })
}

/// A number below `n` that differs between launches (pid and clock; not
/// secret, only spreads reuse).
fn random_below(n: u32) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t ^ ((sys::getpid() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    // splitmix64 finaliser.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % n as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_validate() {
        let p: UidPool = "1879048192:65536".parse().unwrap();
        assert_eq!(p, DEFAULT_POOL);
        assert_eq!(p.last(), 1879048192 + 65535);
        for bad in [
            "",
            "5",
            "0:10",
            "x:1",
            "1:0",
            "4294967290:10",
            "60000:10000",
            "1:y",
        ] {
            let e = bad.parse::<UidPool>().unwrap_err();
            assert_eq!(e.flag, "--uid-pool", "{bad}");
        }
        DEFAULT_POOL.validate().unwrap();
    }

    #[test]
    fn overlaps_with_host_files_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let passwd = d.path().join("passwd");
        let subuid = d.path().join("subuid");
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nalice:x:5001:5001::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&subuid, "alice:100000:65536\n").unwrap();
        let files = [
            (passwd.as_path(), Kind::Account),
            (subuid.as_path(), Kind::Subordinate),
        ];
        let e = check_files(
            &UidPool {
                first: 5000,
                count: 10,
            },
            &files,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("passwd:2") && msg.contains("alice (id 5001)"),
            "{msg}"
        );
        let e = check_files(
            &UidPool {
                first: 165000,
                count: 10,
            },
            &files,
        )
        .unwrap_err();
        assert!(e.to_string().contains("subuid:1"), "{e}");
        check_files(
            &UidPool {
                first: 200000,
                count: 10,
            },
            &files,
        )
        .unwrap();
        check_files(
            &UidPool {
                first: 5002,
                count: 10,
            },
            &files,
        )
        .unwrap();
    }

    #[test]
    fn this_host_leaves_the_default_pool_free() {
        check_host_files(&DEFAULT_POOL).unwrap();
    }

    #[test]
    fn leases_are_exclusive_until_released() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("leases/uid-leases");
        let pool = UidPool {
            first: 3_000_000_000,
            count: 8,
        };
        let a = lease_in(&pool, 4, &file).unwrap();
        let b = lease_in(&pool, 4, &file).unwrap();
        assert_ne!(a.first, b.first);
        for l in [&a, &b] {
            assert!(l.first == pool.first || l.first == pool.first + 4);
        }
        assert!(matches!(
            lease_in(&pool, 4, &file),
            Err(UidError::Exhausted { .. })
        ));
        drop(a);
        let c = lease_in(&pool, 4, &file).unwrap();
        assert_ne!(c.first, b.first);
        let one = UidPool {
            first: 3_000_000_100,
            count: 3,
        };
        let got: std::collections::BTreeSet<u32> = (0..3)
            .map(|_| lease_in(&one, 1, &file).unwrap())
            .map(|l| {
                let f = l.first;
                std::mem::forget(l);
                f
            })
            .collect();
        assert_eq!(got.len(), 3);
    }
}
