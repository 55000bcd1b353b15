//! The capability wall: every set cleared (ambient, then bounding while
//! `CAP_SETPCAP` is still effective, then inheritable, effective and
//! permitted), then `no_new_privs`, then a check through `/proc/self/status`.
//!
//! A cell that owns several uids (`--uid-range`) is the exception: its
//! command (a zygote) keeps [`ZYGOTE_CAPS`] inside the sandbox's user
//! namespace, raised as ambient capabilities so they survive `execve`, and
//! each worker it forks drops them ([`crate::confine`]).

use caps::{CapSet, Capability};

use crate::sys;

/// Highest capability number of the running kernel.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// What a zygote keeps (in its own user namespace only): switching a forked
/// worker to another of the cell's uids, and dropping its bounding set.
pub const ZYGOTE_CAPS: [Capability; 3] = [
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
];

/// The bit mask of `caps` as in `/proc/self/status`.
pub fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// Clears every capability set of the calling thread and sets
/// `no_new_privs`.
pub fn drop_all() -> Result<(), CapsError> {
    drop_all_except(&[])
}

/// Clears every capability set of the calling thread except `keep`, which
/// stays in the bounding, permitted, effective and inheritable sets and is
/// raised in the ambient set (so it survives `execve`); then sets
/// `no_new_privs`.
pub fn drop_all_except(keep: &[Capability]) -> Result<(), CapsError> {
    caps::clear(None, CapSet::Ambient).map_err(|e| CapsError::Clear {
        set: "ambient",
        why: e.to_string(),
    })?;
    let kept = mask(keep);
    for cap in 0..=last_cap() {
        if cap < 64 && kept & (1u64 << cap) != 0 {
            continue;
        }
        match sys::drop_bounding_cap(cap) {
            Ok(()) => {}
            // Not a capability of this kernel.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => {
                return Err(CapsError::Clear {
                    set: "bounding",
                    why: format!("cap {cap}: {e}"),
                })
            }
        }
    }
    let keep_set: caps::CapsHashSet = keep.iter().copied().collect();
    for (set, name) in [
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::set(None, set, &keep_set).map_err(|e| CapsError::Clear {
            set: name,
            why: e.to_string(),
        })?;
    }
    for &c in keep {
        caps::raise(None, CapSet::Ambient, c).map_err(|e| CapsError::Clear {
            set: "ambient",
            why: format!("raising {c}: {e}"),
        })?;
    }
    sys::set_no_new_privs().map_err(|e| CapsError::NoNewPrivs(e.to_string()))?;
    Ok(())
}

/// Clears the sets a process passes on: ambient, inheritable and (with
/// `bounding`, which needs `CAP_SETPCAP` effective) the bounding set. The
/// permitted and effective sets stay, so a confining worker can still switch
/// ids ([`crate::confine`]).
pub fn clear_transferable(bounding: bool) -> Result<(), CapsError> {
    caps::clear(None, CapSet::Ambient).map_err(|e| CapsError::Clear {
        set: "ambient",
        why: e.to_string(),
    })?;
    if bounding {
        for cap in 0..=last_cap() {
            match sys::drop_bounding_cap(cap) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    return Err(CapsError::Clear {
                        set: "bounding",
                        why: format!("cap {cap}: {e}"),
                    })
                }
            }
        }
    }
    caps::clear(None, CapSet::Inheritable).map_err(|e| CapsError::Clear {
        set: "inheritable",
        why: e.to_string(),
    })
}

/// Clears the inheritable, effective and permitted sets (dropping needs no
/// privilege) and sets `no_new_privs`.
pub fn drop_all_sets() -> Result<(), CapsError> {
    for (set, name) in [
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::clear(None, set).map_err(|e| CapsError::Clear {
            set: name,
            why: e.to_string(),
        })?;
    }
    sys::set_no_new_privs().map_err(|e| CapsError::NoNewPrivs(e.to_string()))
}

/// The capability lines of `/proc/self/status`, for a check after dropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapStatus {
    /// `CapInh`.
    pub inheritable: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapEff`.
    pub effective: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `CapAmb`.
    pub ambient: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
}

impl CapStatus {
    /// Parses the text of `/proc/<pid>/status`.
    pub fn parse(status: &str) -> CapStatus {
        let mut s = CapStatus::default();
        for line in status.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            let hex = || u64::from_str_radix(v, 16).unwrap_or(u64::MAX);
            match k {
                "CapInh" => s.inheritable = hex(),
                "CapPrm" => s.permitted = hex(),
                "CapEff" => s.effective = hex(),
                "CapBnd" => s.bounding = hex(),
                "CapAmb" => s.ambient = hex(),
                "NoNewPrivs" => s.no_new_privs = v == "1",
                _ => {}
            }
        }
        s
    }

    /// Whether every set is empty and `no_new_privs` is on.
    pub fn all_clear(&self) -> bool {
        self.only(0)
    }

    /// Whether every set holds exactly `mask` (bounding, permitted,
    /// effective, inheritable, ambient) and `no_new_privs` is on.
    pub fn only(&self, mask: u64) -> bool {
        [
            self.inheritable,
            self.permitted,
            self.effective,
            self.bounding,
            self.ambient,
        ]
        .iter()
        .all(|&s| s == mask)
            && self.no_new_privs
    }
}

/// Reads the calling thread's capability state.
pub fn current() -> Result<CapStatus, CapsError> {
    std::fs::read_to_string("/proc/thread-self/status")
        .map(|s| CapStatus::parse(&s))
        .map_err(|e| CapsError::Check(e.to_string()))
}

/// Errors of the capability wall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CapsError {
    /// Clearing a set failed.
    #[error("clearing the {set} set: {why}")]
    Clear {
        /// Which set.
        set: &'static str,
        /// Why.
        why: String,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(String),
    /// The check afterwards failed.
    #[error("checking /proc/self/status: {0}")]
    Check(String),
    /// Something survived.
    #[error("capabilities left after dropping: {0:?}")]
    Left(CapStatus),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::in_child;

    #[test]
    fn status_lines_parse() {
        let text = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n\
                    CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";
        let s = CapStatus::parse(text);
        assert_eq!(s.permitted, 0x1ff_ffff_ffff);
        assert!(!s.no_new_privs);
        assert!(!s.all_clear());
        let clear = CapStatus {
            no_new_privs: true,
            ..CapStatus::default()
        };
        assert!(clear.all_clear());
    }

    #[test]
    fn drop_all_except_keeps_the_zygote_set_in_every_set() {
        in_child(
            "capabilities::tests::drop_all_except_keeps_the_zygote_set_in_every_set",
            || {
                drop_all_except(&ZYGOTE_CAPS).unwrap();
                let s = current().unwrap();
                assert!(s.only(mask(&ZYGOTE_CAPS)), "{s:?}");
                assert!(!s.all_clear());
                assert_eq!(mask(&ZYGOTE_CAPS), (1 << 6) | (1 << 7) | (1 << 8));
            },
        );
    }

    #[test]
    fn drop_all_leaves_nothing() {
        in_child("capabilities::tests::drop_all_leaves_nothing", || {
            drop_all().unwrap();
            let s = current().unwrap();
            assert!(s.all_clear(), "{s:?}");
        });
    }
}
