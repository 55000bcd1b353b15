//! Received descriptors: fd messages read from the socket and each descriptor checked (kind, memfd, seals, size) before it is kept.

use super::*;

impl Channel {
    /// Reads every queued fd message from the socket into the table, validating each
    /// descriptor (kind, memfd, seals, size) before it is kept.
    pub(super) fn drain_socket(&self, fds: &mut FdTable) -> Result<(), ChannelError> {
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
            layout::FD_KIND_POOL if !from_host && !self.inner.cfg.frozen_outputs => {
                (sys::SEAL_SHRINK | sys::SEAL_GROW, 0)
            }
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
}

/// The major number of a Linux `dev_t` (glibc's `gnu_dev_major`).
pub(super) fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// Whether `meta` is an NVIDIA driver character device (what exported CUDA
/// allocations are). Unit tests also accept `/dev/null` (major 1, minor 3) so the
/// bookkeeping can be tested on machines without the driver.
pub(super) fn is_cuda_handle(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !meta.file_type().is_char_device() {
        return false;
    }
    let major = dev_major(meta.rdev());
    major == layout::NVIDIA_MAJOR || (cfg!(test) && major == 1 && (meta.rdev() & 0xff) == 3)
}
