//! A hostile worker, written from the documented byte layout, breaks the protocol
//! one way per case. Each case must give a typed error on that channel (no panic,
//! hang or SIGBUS in the host), poison it, and leave a good worker fully served.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::sys::{self, Mapping, Protection};
use nodecell_ipc::doorbell::Doorbell;
use nodecell_ipc::frame::{kind, tag};
use nodecell_ipc::layout::{self, Geometry};
use nodecell_ipc::{
    Arena, ChannelConfig, ChannelError, DecodeError, Frame, Limits, TensorError, Value, Violation,
    WorkerFds,
};

use crate::util::{self, child_say};

/// The worker end, driven byte by byte.
struct RawPeer {
    m: Mapping,
    geo: Geometry,
    head: u64,
    fds: WorkerFds,
}

impl RawPeer {
    fn open(fds: WorkerFds) -> RawPeer {
        let h = Mapping::map(
            fds.ring.as_fd(),
            layout::HEADER_SIZE,
            Protection::ReadShared,
        )
        .unwrap();
        let mut b = [0u8; 64];
        h.read_into(0, &mut b);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let geo = Geometry {
            slot_count: u32_at(layout::OFF_SLOT_COUNT),
            slot_size: u32_at(layout::OFF_SLOT_SIZE),
            max_inline: u32_at(layout::OFF_MAX_INLINE),
        };
        let m = Mapping::map(fds.ring.as_fd(), geo.total_size(), Protection::WriteShared).unwrap();
        RawPeer {
            m,
            geo,
            head: 0,
            fds,
        }
    }

    fn ctl64(&self, ring: usize, f: usize) -> &std::sync::atomic::AtomicU64 {
        self.m.atomic_u64(layout::ctl(ring, f))
    }

    fn ring_bell(&self) {
        let r = layout::RING_TO_HOST;
        Doorbell::new(
            self.m.atomic_u32(layout::ctl(r, layout::CTL_DATA_SEQ)),
            self.m.atomic_u32(layout::ctl(r, layout::CTL_DATA_SLEEPING)),
        )
        .ring();
    }

    /// Writes a record (header says `len`, `payload` bytes follow) and publishes `slots`.
    fn push_raw(&mut self, kind: u16, len: u32, payload: &[u8], slots: u64) {
        let ring_bytes = self.geo.ring_bytes();
        let base = self.geo.ring_offset(layout::RING_TO_HOST);
        let mut pos =
            ((self.head % u64::from(self.geo.slot_count)) as usize) * self.geo.slot_size as usize;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(payload);
        for b in bytes {
            self.m.write_from(base + pos, &[b]);
            pos = (pos + 1) % ring_bytes;
        }
        self.head += slots;
        self.ctl64(layout::RING_TO_HOST, layout::CTL_HEAD)
            .store(self.head, Ordering::Release);
        self.ring_bell();
    }

    fn push(&mut self, kind: u16, payload: &[u8]) {
        let slots = self.geo.slots_for(payload.len());
        self.push_raw(kind, payload.len() as u32, payload, slots);
    }

    fn push_frame(&mut self, f: &Frame) {
        let mut b = Vec::new();
        f.encode(&mut b, &Limits::default()).unwrap();
        self.push(layout::RECORD_INLINE, &b);
    }

    fn send_fds(&self, entries: &[(u64, u8)], fds: &[&OwnedFd]) {
        let mut d = Vec::new();
        d.extend_from_slice(&layout::FD_MSG_MAGIC.to_le_bytes());
        d.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (slot, k) in entries {
            d.extend_from_slice(&slot.to_le_bytes());
            d.extend_from_slice(&[*k, 0, 0, 0, 0, 0, 0, 0]);
        }
        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        sys::send_fds(self.fds.sock.as_fd(), &d, &b).unwrap();
    }

    fn spill(&mut self, slot: u64, len: u64) {
        let mut p = slot.to_le_bytes().to_vec();
        p.extend_from_slice(&len.to_le_bytes());
        self.push(layout::RECORD_SPILL, &p);
    }
}

fn memfd(bytes: &[u8], seals: u32) -> OwnedFd {
    let fd = sys::memfd_create("hostile").unwrap();
    sys::ftruncate(fd.as_fd(), bytes.len() as u64).unwrap();
    sys::pwrite_all(fd.as_fd(), bytes, 0).unwrap();
    if seals != 0 {
        sys::add_seals(fd.as_fd(), seals).unwrap();
    }
    fd
}

const IMMUTABLE: u32 = sys::SEAL_WRITE | sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL;

fn reply_header() -> Vec<u8> {
    let mut b = vec![1, kind::REPLY, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&1u64.to_le_bytes());
    b
}

/// A reply frame holding one raw tensor descriptor.
fn tensor_reply(
    slot: u64,
    offset: u64,
    nbytes: u64,
    dtype: u8,
    shape: &[u64],
    strides: &[i64],
    flags: u8,
) -> Vec<u8> {
    let mut b = reply_header();
    b.push(tag::TENSOR);
    b.extend_from_slice(&slot.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&nbytes.to_le_bytes());
    b.extend_from_slice(&[dtype, shape.len() as u8, flags, 0, 0, 0, 0, 0]);
    for s in shape {
        b.extend_from_slice(&s.to_le_bytes());
    }
    for s in strides {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

type Check = fn(&ChannelError) -> bool;

enum Expect {
    /// `recv` fails with a matching error.
    RecvError(Check),
    /// `send` fails with a matching error.
    SendError(Check),
    /// A heartbeat arrives and the worker exits 0 (its own checks passed).
    CleanExit,
}

struct Case {
    name: &'static str,
    act: fn(&mut RawPeer) -> i32,
    expect: Expect,
}

fn v(e: &ChannelError) -> Option<&Violation> {
    match e {
        ChannelError::Violation(v) => Some(v),
        _ => None,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "corrupted head (far ahead of tail)",
            act: |p| {
                p.ctl64(layout::RING_TO_HOST, layout::CTL_HEAD)
                    .store(1 << 40, Ordering::Release);
                p.ring_bell();
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::RingIndex { ring: 1, .. }))
            }),
        },
        Case {
            name: "corrupted tail of the host's ring (passes head)",
            act: |p| {
                p.ctl64(layout::RING_TO_WORKER, layout::CTL_TAIL)
                    .store(12345, Ordering::Release);
                0
            },
            expect: Expect::SendError(|e| {
                matches!(v(e), Some(Violation::RingIndex { ring: 0, .. }))
            }),
        },
        Case {
            name: "oversized record length",
            act: |p| {
                p.push_raw(layout::RECORD_INLINE, 0xFFFF_FFF0, &[], 1);
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::RecordLength { .. }))),
        },
        Case {
            name: "record longer than what was published",
            act: |p| {
                p.push_raw(layout::RECORD_INLINE, 4000, &[0; 16], 1);
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::RecordLength { .. }))),
        },
        Case {
            name: "unknown record kind",
            act: |p| {
                p.push(9, &[0; 8]);
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::RecordHeader { kind: 9, .. }))
            }),
        },
        Case {
            name: "garbage bytes",
            act: |p| {
                let g: Vec<u8> = (0..300u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect();
                p.push(layout::RECORD_INLINE, &g);
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::Decode(_)))),
        },
        Case {
            name: "depth bomb",
            act: |p| {
                let mut b = reply_header();
                for _ in 0..10_000 {
                    b.extend_from_slice(&[tag::LIST, 1, 0, 0, 0]);
                }
                b.push(tag::NONE);
                p.push(layout::RECORD_INLINE, &b);
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::Decode(DecodeError::TooDeep { .. })))
            }),
        },
        Case {
            name: "count bomb (list of 4 billion items in 21 bytes)",
            act: |p| {
                let mut b = reply_header();
                b.extend_from_slice(&[tag::LIST, 0xff, 0xff, 0xff, 0xff]);
                p.push(layout::RECORD_INLINE, &b);
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::Decode(DecodeError::Truncated { .. })))
            }),
        },
        Case {
            name: "string length beyond the frame",
            act: |p| {
                let mut b = reply_header();
                b.push(tag::STR);
                b.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
                b.extend_from_slice(b"abc");
                p.push(layout::RECORD_INLINE, &b);
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::Decode(DecodeError::Truncated { .. })))
            }),
        },
        Case {
            name: "spill naming a slot never sent",
            act: |p| {
                p.spill(77, 100);
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::UnknownSlot { slot: 77 }))
            }),
        },
        Case {
            name: "spill in an unsealed memfd, truncated after sending",
            act: |p| {
                let mut b = Vec::new();
                Frame::Heartbeat {
                    seq: 1,
                    monotonic_ns: 1,
                }
                .encode(&mut b, &Limits::default())
                .unwrap();
                let fd = memfd(&b, 0);
                p.send_fds(&[(5, layout::FD_KIND_SPILL)], &[&fd]);
                p.spill(5, b.len() as u64);
                sys::ftruncate(fd.as_fd(), 0).unwrap();
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::Seals { slot: 5, .. }))),
        },
        Case {
            name: "spill longer than its sealed memfd",
            act: |p| {
                let fd = memfd(&[0u8; 100], IMMUTABLE);
                p.send_fds(&[(5, layout::FD_KIND_SPILL)], &[&fd]);
                p.spill(5, 1 << 20);
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::ArenaSize {
                        slot: 5,
                        size: 100,
                        ..
                    })
                )
            }),
        },
        Case {
            name: "spill larger than the frame limit",
            act: |p| {
                let fd = memfd(&[0u8; 100], IMMUTABLE);
                p.send_fds(&[(5, layout::FD_KIND_SPILL)], &[&fd]);
                p.spill(5, 1 << 40);
                0
            },
            expect: Expect::RecvError(
                |e| matches!(v(e), Some(Violation::RecordLength { len, .. }) if *len == 1 << 40),
            ),
        },
        Case {
            name: "tensor naming a bogus arena id",
            act: |p| {
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(55, 0, 64, 11, &[16], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::UnknownSlot { slot: 55 }))
            }),
        },
        Case {
            name: "tensor offset past the arena's sealed size",
            act: |p| {
                let fd = memfd(&[0u8; 4096], IMMUTABLE);
                p.send_fds(&[(6, layout::FD_KIND_ARENA)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 4000, 200, 1, &[200], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::Tensor(TensorError::OutOfArena { .. }))
                )
            }),
        },
        Case {
            name: "tensor asking to be writable in an immutable arena",
            act: |p| {
                let fd = memfd(&[0u8; 4096], IMMUTABLE);
                p.send_fds(&[(6, layout::FD_KIND_ARENA)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 64, 1, &[64], &[1], 1),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::SlotKind { slot: 6, .. }))
            }),
        },
        Case {
            name: "tensor with an unknown dtype",
            act: |p| {
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(1, 0, 64, 200, &[4], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::Decode(DecodeError::Tensor {
                        err: TensorError::UnknownDtype(200),
                        ..
                    }))
                )
            }),
        },
        Case {
            name: "tensor shape x stride overflow",
            act: |p| {
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(1, 0, 64, 12, &[1 << 40, 1 << 40], &[1 << 40, 1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::Decode(DecodeError::Tensor {
                        err: TensorError::Overflow { .. },
                        ..
                    }))
                )
            }),
        },
        Case {
            name: "tensor with 9 dimensions",
            act: |p| {
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(1, 0, 64, 1, &[1; 9], &[1; 9], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::Decode(DecodeError::Tensor {
                        err: TensorError::TooManyDims(9),
                        ..
                    }))
                )
            }),
        },
        Case {
            name: "tensor span beyond nbytes (negative-free stride trick)",
            act: |p| {
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(1, 0, 64, 11, &[4, 4], &[100, 1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::Decode(DecodeError::Tensor {
                        err: TensorError::SpanTooLarge { .. },
                        ..
                    }))
                )
            }),
        },
        Case {
            name: "unsealed memfd sent as a tensor arena (then truncated)",
            act: |p| {
                let fd = memfd(&[1u8; 8192], 0);
                p.send_fds(&[(6, layout::FD_KIND_ARENA)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 8192, 1, &[8192], &[1], 0),
                );
                sys::ftruncate(fd.as_fd(), 0).unwrap();
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::Seals { slot: 6, .. }))),
        },
        Case {
            name: "arena sealed FUTURE_WRITE only (worker could still write it)",
            act: |p| {
                let fd = memfd(
                    &[1u8; 8192],
                    sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_FUTURE_WRITE,
                );
                p.send_fds(&[(6, layout::FD_KIND_ARENA)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 8192, 1, &[8192], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::Seals { slot: 6, .. }))),
        },
        Case {
            name: "empty sealed memfd sent as an arena",
            act: |p| {
                let fd = memfd(&[], IMMUTABLE);
                p.send_fds(&[(6, layout::FD_KIND_ARENA)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 0, 1, &[0], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::ArenaSize {
                        slot: 6,
                        size: 0,
                        ..
                    })
                )
            }),
        },
        Case {
            name: "a socket sent as an arena (not a memfd)",
            act: |p| {
                let (a, _b) = sys::seqpacket_pair().unwrap();
                p.send_fds(&[(6, layout::FD_KIND_ARENA)], &[&a]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 8, 1, &[8], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::NotMemfd { slot: 6 }))),
        },
        Case {
            name: "worker offering a writable output arena",
            act: |p| {
                let fd = memfd(&[1u8; 64], sys::SEAL_SHRINK | sys::SEAL_GROW);
                p.send_fds(&[(6, layout::FD_KIND_OUTPUT)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 8, 1, &[8], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::SlotKind { slot: 6, kind: 3 }))
            }),
        },
        Case {
            name: "pooled arena without shrink/grow seals (could SIGBUS the host)",
            act: |p| {
                let fd = memfd(&[1u8; 4096], 0);
                p.send_fds(&[(6, layout::FD_KIND_POOL)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 64, 1, &[64], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::Seals { slot: 6, .. }))),
        },
        Case {
            name: "pooled arena of size 0",
            act: |p| {
                let fd = memfd(&[], sys::SEAL_SHRINK | sys::SEAL_GROW);
                p.send_fds(&[(6, layout::FD_KIND_POOL)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 1, 1, &[1], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::ArenaSize { slot: 6, .. }))
            }),
        },
        Case {
            name: "tensor reaching past a pooled arena",
            act: |p| {
                let fd = memfd(&[0u8; 4096], sys::SEAL_SHRINK | sys::SEAL_GROW);
                p.send_fds(&[(6, layout::FD_KIND_POOL)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 4090, 64, 1, &[64], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::Tensor(TensorError::OutOfArena { .. }))
                )
            }),
        },
        Case {
            name: "tensor asking to be writable in a pooled arena",
            act: |p| {
                let fd = memfd(&[0u8; 4096], sys::SEAL_SHRINK | sys::SEAL_GROW);
                p.send_fds(&[(6, layout::FD_KIND_POOL)], &[&fd]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 64, 1, &[64], &[1], 1),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::SlotKind { slot: 6, .. }))
            }),
        },
        Case {
            name: "a pipe sent as a pooled arena (not a memfd)",
            act: |p| {
                let (a, _b) = sys::seqpacket_pair().unwrap();
                p.send_fds(&[(6, layout::FD_KIND_POOL)], &[&a]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(6, 0, 8, 1, &[8], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::NotMemfd { slot: 6 }))),
        },
        Case {
            name: "too many fds in one message (MSG_CTRUNC)",
            act: |p| {
                let fds: Vec<OwnedFd> = (0..20).map(|_| memfd(&[0u8; 64], IMMUTABLE)).collect();
                let entries: Vec<(u64, u8)> =
                    (0..20).map(|i| (100 + i, layout::FD_KIND_ARENA)).collect();
                p.send_fds(&entries, &fds.iter().collect::<Vec<_>>());
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(100, 0, 8, 1, &[8], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::FdMessage { .. }))),
        },
        Case {
            name: "fd message with bad magic",
            act: |p| {
                let fd = memfd(&[0u8; 64], IMMUTABLE);
                let mut d = b"EVIL".to_vec();
                d.extend_from_slice(&1u32.to_le_bytes());
                d.extend_from_slice(&[0; 16]);
                sys::send_fds(p.fds.sock.as_fd(), &d, &[fd.as_fd()]).unwrap();
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(7, 0, 8, 1, &[8], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::FdMessage {
                        reason: "bad magic"
                    })
                )
            }),
        },
        Case {
            name: "fd message count not matching its descriptors",
            act: |p| {
                let fd = memfd(&[0u8; 64], IMMUTABLE);
                p.send_fds(
                    &[(7, layout::FD_KIND_ARENA), (8, layout::FD_KIND_ARENA)],
                    &[&fd],
                );
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(7, 0, 8, 1, &[8], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| matches!(v(e), Some(Violation::FdMessage { .. }))),
        },
        Case {
            name: "slot id sent twice",
            act: |p| {
                let a = memfd(&[0u8; 64], IMMUTABLE);
                let b = memfd(&[0u8; 64], IMMUTABLE);
                p.send_fds(&[(7, layout::FD_KIND_ARENA)], &[&a]);
                p.send_fds(&[(7, layout::FD_KIND_ARENA)], &[&b]);
                p.push(
                    layout::RECORD_INLINE,
                    &tensor_reply(7, 0, 8, 1, &[8], &[1], 0),
                );
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(v(e), Some(Violation::DuplicateSlot { slot: 7 }))
            }),
        },
        Case {
            name: "release of references never given",
            act: |p| {
                p.push_frame(&Frame::Release(nodecell_ipc::Release {
                    handles: vec![],
                    tensors: vec![(3, 5)],
                    retired: vec![],
                }));
                0
            },
            expect: Expect::RecvError(|e| {
                matches!(
                    v(e),
                    Some(Violation::Release {
                        slot: 3,
                        count: 5,
                        held: 0
                    })
                )
            }),
        },
        Case {
            name: "attempts to ftruncate the shared channel memfd fail",
            act: |p| {
                let ring = p.fds.ring.as_fd();
                let shrink = sys::ftruncate(ring, 0);
                let grow = sys::ftruncate(ring, 1 << 30);
                let seal_off = sys::add_seals(ring, sys::SEAL_WRITE);
                if shrink.is_ok() || grow.is_ok() || seal_off.is_ok() {
                    child_say(&format!(
                        "ftruncate/seal allowed: {shrink:?} {grow:?} {seal_off:?}"
                    ));
                    return 9;
                }
                p.push_frame(&Frame::Heartbeat {
                    seq: 1,
                    monotonic_ns: 2,
                });
                0
            },
            expect: Expect::CleanExit,
        },
    ]
}

#[test]
fn hostile_worker_cases_each_give_a_typed_error_and_the_host_serves_others() {
    let (good, gw) = util::spawn_worker(ChannelConfig::default(), util::echo_worker);
    let mut failures = Vec::new();
    for case in cases() {
        let act = case.act;
        let (ch, w) = util::spawn_raw(ChannelConfig::default(), move |fds| {
            let mut p = RawPeer::open(fds);
            let code = act(&mut p);
            if code != 0 {
                return code;
            }
            std::thread::sleep(Duration::from_millis(300));
            0
        });
        let outcome: Result<(), String> = match case.expect {
            Expect::RecvError(check) => match ch.recv(Some(Duration::from_secs(5))) {
                Err(e) if check(&e) => {
                    // Poisoned: the same error again, without touching the peer's memory.
                    match ch.try_recv() {
                        Err(e2) if e2.to_string() == e.to_string() => Ok(()),
                        other => Err(format!("not poisoned: {other:?}")),
                    }
                }
                other => Err(format!("got {other:?}")),
            },
            Expect::SendError(check) => {
                // The producer re-reads the consumer's tail when its cached view of the
                // free space runs out: at the latest after one ring's worth of frames.
                std::thread::sleep(Duration::from_millis(100));
                let cap = ch.geometry().slot_count as u64 + 1;
                match (0..cap)
                    .map(|i| {
                        ch.send(&Frame::Heartbeat {
                            seq: i,
                            monotonic_ns: 0,
                        })
                    })
                    .find(|r| r.is_err())
                {
                    Some(Err(e)) if check(&e) => Ok(()),
                    other => Err(format!("got {other:?}")),
                }
            }
            Expect::CleanExit => match ch.recv(Some(Duration::from_secs(5))) {
                Ok(Frame::Heartbeat { seq: 1, .. }) => match w.wait(Duration::from_secs(5)) {
                    0 => Ok(()),
                    c => Err(format!("worker exit {c}")),
                },
                other => Err(format!("got {other:?}")),
            },
        };
        if let Err(e) = outcome {
            failures.push(format!("{}: {e}", case.name));
        }
        // The good worker is still served after every case.
        assert_eq!(
            util::call(&good, "add", vec![Value::Int(1), Value::Int(2)]),
            Value::Int(3),
            "after {}",
            case.name
        );
    }
    util::call(&good, "exit", vec![]);
    assert_eq!(gw.wait(Duration::from_secs(5)), 0);
    assert!(
        failures.is_empty(),
        "hostile cases not handled:\n{}",
        failures.join("\n")
    );
}

#[test]
fn worker_cannot_write_or_truncate_a_host_arena() {
    let (ch, w) = util::spawn_raw(ChannelConfig::default(), |fds| {
        // Receive the arena fd the host shares, and attack it.
        let mut buf = [0u8; 64];
        let msg = loop {
            if let Some(m) = sys::recv_fds(fds.sock.as_fd(), &mut buf, 4).unwrap() {
                break m;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let fd = &msg.fds[0];
        let len = sys::fstat(fd.as_fd()).unwrap().size as usize;
        if sys::ftruncate(fd.as_fd(), 0).is_ok()
            || sys::ftruncate(fd.as_fd(), len as u64 * 2).is_ok()
        {
            return 10;
        }
        if Mapping::map(fd.as_fd(), len, Protection::WriteShared).is_ok() {
            return 11;
        }
        if sys::pwrite_all(fd.as_fd(), b"x", 0).is_ok() {
            return 12;
        }
        // Copy-on-write is allowed and stays private.
        let cow = Mapping::map(fd.as_fd(), len, Protection::CopyOnWrite).unwrap();
        cow.write_from(0, &[0xFF; 64]);
        let mut p = RawPeer::open(fds);
        p.push_frame(&Frame::Heartbeat {
            seq: 1,
            monotonic_ns: 0,
        });
        0
    });
    let a = Arena::create(1 << 20).unwrap();
    a.write(0, &[5u8; 64]).unwrap();
    a.seal_read_only().unwrap();
    ch.share(&a).unwrap();
    assert!(matches!(
        ch.recv(Some(Duration::from_secs(5))),
        Ok(Frame::Heartbeat { .. })
    ));
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
    let mut b = [0u8; 64];
    a.read(0, &mut b).unwrap();
    assert_eq!(b, [5u8; 64], "the host's arena is untouched");
    // The host can still write its own (FUTURE_WRITE keeps existing mappings writable).
    a.write(0, &[6u8; 64]).unwrap();
}
