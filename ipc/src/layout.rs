//! The channel memfd's byte layout and the fd-passing message format.
//!
//! Everything here is little-endian and fixed; a peer in another language needs
//! only this page, [`crate::frame`] and the futex protocol in [`crate::doorbell`].
//!
//! # The channel memfd
//!
//! The host creates it with `memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING|MFD_NOEXEC_SEAL)`,
//! sizes it to `total_size`, writes the header, and seals it
//! `F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL` before the worker sees it. The worker maps
//! all of it `PROT_READ|PROT_WRITE, MAP_SHARED`.
//!
//! ```text
//! header page, 4096 bytes
//! 0     u64  magic        = MAGIC ("NCELLIPC" as bytes)
//! 8     u32  abi_version  = ABI_VERSION (1)
//! 12    u32  header_size  = 4096
//! 16    u32  slot_count   power of two, 2..=2^20
//! 20    u32  slot_size    power of two, 64..=65536
//! 24    u64  total_size   = 4096 + 2 * slot_count * slot_size
//! 32    u64  ring[0] offset (host→worker) = 4096
//! 40    u64  ring[1] offset (worker→host) = 4096 + slot_count * slot_size
//! 48    u32  max_inline   largest record payload in bytes; <= slot_count*slot_size/2 - 8
//! 52    u32  flags        bit 0 (HEADER_FLAG_CUDA): the host lets CUDA memory cross this
//!                         channel (`share_cuda_ipc`); bit 1 (HEADER_FLAG_FROZEN_OUTPUTS):
//!                         the host accepts only immutable (write-sealed) output arenas,
//!                         no pooled ones; other bits 0. Informs the worker only: the
//!                         host never reads it back, it keeps its own config.
//! 56..  zero
//! 128   u32  host_cpu     1 + the CPU the host's receiving thread ran on when it last
//!                         began to wait for the worker (0: not known)
//! 256   u32  worker_cpu   the same for the worker's receiving thread
//!                         (both are hints for the wait strategy, see [`crate::doorbell`]:
//!                         a waiter whose peer runs on its own CPU sleeps at once instead
//!                         of spinning; a wrong value only costs latency)
//! 512   control block for ring 0 (host→worker)
//! 1024  control block for ring 1 (worker→host)
//!
//! control block (each field on its own 128-byte line, so producer and consumer never share one)
//! +0    u64  head            slots published by the producer (monotonic, wraps at 2^64)
//! +128  u64  tail            slots consumed by the consumer (monotonic)
//! +256  u32  data_seq        futex word the consumer sleeps on ("data arrived")
//! +260  u32  data_sleeping   1 = the consumer is asleep (or about to be) on data_seq; 2 = the
//!                            same, and it accepts an early ring (see [`crate::doorbell`])
//! +384  u32  space_seq       futex word the producer sleeps on ("space freed")
//! +388  u32  space_sleeping  1 = the producer is asleep on space_seq
//! ```
//!
//! # Records in a ring
//!
//! A ring is `slot_count` slots of `slot_size` bytes. A record starts at the start of
//! slot `head % slot_count` with an 8-byte header, `u32 len, u16 kind, u16 reserved=0`,
//! followed by `len` payload bytes; header and payload run on through the following
//! slots, continuing at slot 0 after the last one. The record occupies
//! `ceil((8 + len) / slot_size)` slots, and the producer then stores
//! `head += that` with release ordering. The consumer loads `head` once with acquire
//! ordering, checks `head - tail <= slot_count`, reads the header, checks `len <=
//! max_inline` and that the record's slots are all published, copies the payload out,
//! then stores `tail +=` the record's slots with release ordering.
//!
//! Record kinds: 0 = an inline frame (payload = the frame, see [`crate::frame`]);
//! 1 = a spilled frame (payload = `u64 slot, u64 len`: the frame is the first `len`
//! bytes of the memfd sent earlier over the socket as `slot`, kind SPILL).
//!
//! # Messages on the socket
//!
//! The socketpair is `AF_UNIX, SOCK_SEQPACKET`. Each message carries 1 to
//! `MAX_FDS_PER_MSG` descriptors as one `SCM_RIGHTS` control message and data:
//!
//! ```text
//! 0   u32 magic = FD_MSG_MAGIC ("NCFD")
//! 4   u32 count (= number of descriptors attached)
//! 8   count × { u64 slot, u8 kind, 7 × u8 extra }
//! ```
//!
//! `extra` is zero for every kind but CUDA, where it is the allocation's size in
//! bytes as a 56-bit little-endian integer.
//!
//! Kinds: [`FD_KIND_SPILL`] (a spilled frame, used once), [`FD_KIND_ARENA`] (tensor
//! storage the receiver maps read-only or copy-on-write), [`FD_KIND_OUTPUT`] (tensor
//! storage the receiver may map writable-shared; only the host sends these),
//! [`FD_KIND_POOL`] (a worker's pooled output arena: reused for later outputs once
//! every descriptor naming it was released, so it carries no write seal; only a
//! worker sends these, and only on a channel whose header lacks
//! [`HEADER_FLAG_FROZEN_OUTPUTS`]),
//! [`FD_KIND_CUDA`] (a CUDA allocation exported with `cuMemExportToShareableHandle`
//! as a POSIX fd; either side may send one, only on a channel whose host enabled
//! CUDA: header flag above). Slot ids are chosen by the sender, unique per direction,
//! never reused. A descriptor is sent before the record or frame that names it.
//!
//! Seals the receiver requires (checked with `F_GET_SEALS` and `fstat` before mapping):
//! SPILL: `WRITE|SHRINK|GROW`; ARENA from the worker: `WRITE|SHRINK|GROW`; ARENA from
//! the host: `SHRINK|GROW` plus `WRITE` or `FUTURE_WRITE`; OUTPUT: `SHRINK|GROW` and
//! neither write seal; POOL (from the worker): `SHRINK|GROW`. The receiver maps POOL
//! arenas copy-on-write only: the bytes of a tensor in one may still change (the
//! worker can write its own memory) until the receiver releases the descriptor, but
//! the file can never shrink under a mapping, so reading it never faults.
//!
//! # Pinned slots
//!
//! A sender may keep a slot whose references all came back instead of retiring it
//! (a pooled arena: the peer keeps the fd and its mapping, and the next tensor in
//! that arena needs no new fd). While no reference to it is outstanding the peer
//! must not name it: a descriptor naming a slot of the receiver's own (origin
//! receiver) is valid only while the peer holds a reference to that slot.
//!
//! A CUDA descriptor is not a memfd and has no seals or file size. The receiver
//! checks instead that the channel carries CUDA, that the fd is a character device
//! of the NVIDIA driver (major [`NVIDIA_MAJOR`]: exported allocations are NVIDIA
//! control files), that the size in `extra` is a non-zero multiple of 4096 no larger
//! than its limit (the CUDA driver then refuses to map more than the allocation
//! holds), and that it holds no more CUDA descriptors than its cap. Descriptors name
//! it with device code cuda (see [`crate::frame`]); the allocation stays alive on the
//! sender while references are outstanding, exactly like an arena.

/// First 8 bytes of the channel memfd.
pub const MAGIC: [u8; 8] = *b"NCELLIPC";
/// Layout version in the header.
pub const ABI_VERSION: u32 = 1;
/// Bytes in the header page.
pub const HEADER_SIZE: usize = 4096;
/// Byte offset of `magic`.
pub const OFF_MAGIC: usize = 0;
/// Byte offset of `abi_version`.
pub const OFF_VERSION: usize = 8;
/// Byte offset of `header_size`.
pub const OFF_HEADER_SIZE: usize = 12;
/// Byte offset of `slot_count`.
pub const OFF_SLOT_COUNT: usize = 16;
/// Byte offset of `slot_size`.
pub const OFF_SLOT_SIZE: usize = 20;
/// Byte offset of `total_size`.
pub const OFF_TOTAL_SIZE: usize = 24;
/// Byte offset of ring 0's offset.
pub const OFF_RING0: usize = 32;
/// Byte offset of ring 1's offset.
pub const OFF_RING1: usize = 40;
/// Byte offset of `max_inline`.
pub const OFF_MAX_INLINE: usize = 48;
/// Byte offset of `host_cpu` (the host's CPU + 1, a wait-strategy hint; 0: unknown).
pub const OFF_HOST_CPU: usize = 128;
/// Byte offset of `worker_cpu` (the worker's CPU + 1, a wait-strategy hint; 0: unknown).
pub const OFF_WORKER_CPU: usize = 256;
/// Byte offset of the control block of ring `i` is `CONTROL_BASE + i * CONTROL_SIZE`.
pub const CONTROL_BASE: usize = 512;
/// Bytes per control block.
pub const CONTROL_SIZE: usize = 512;
/// Offset of `head` inside a control block.
pub const CTL_HEAD: usize = 0;
/// Offset of `tail` inside a control block.
pub const CTL_TAIL: usize = 128;
/// Offset of `data_seq` inside a control block.
pub const CTL_DATA_SEQ: usize = 256;
/// Offset of `data_sleeping` inside a control block.
pub const CTL_DATA_SLEEPING: usize = 260;
/// Offset of `space_seq` inside a control block.
pub const CTL_SPACE_SEQ: usize = 384;
/// Offset of `space_sleeping` inside a control block.
pub const CTL_SPACE_SLEEPING: usize = 388;
/// Bytes in a record header.
pub const RECORD_HEADER: usize = 8;
/// Record kind: inline frame.
pub const RECORD_INLINE: u16 = 0;
/// Record kind: spilled frame.
pub const RECORD_SPILL: u16 = 1;
/// Smallest slot size.
pub const MIN_SLOT_SIZE: u32 = 64;
/// Largest slot size.
pub const MAX_SLOT_SIZE: u32 = 65536;
/// Smallest slot count.
pub const MIN_SLOT_COUNT: u32 = 2;
/// Largest slot count.
pub const MAX_SLOT_COUNT: u32 = 1 << 20;
/// Ring index of host→worker.
pub const RING_TO_WORKER: usize = 0;
/// Ring index of worker→host.
pub const RING_TO_HOST: usize = 1;

/// First 4 bytes of a socket message.
pub const FD_MSG_MAGIC: u32 = u32::from_le_bytes(*b"NCFD");
/// Most descriptors in one socket message.
pub const MAX_FDS_PER_MSG: usize = 16;
/// Bytes per descriptor entry in a socket message.
pub const FD_ENTRY_SIZE: usize = 16;
/// Socket descriptor kind: spilled frame.
pub const FD_KIND_SPILL: u8 = 1;
/// Socket descriptor kind: read-only tensor arena.
pub const FD_KIND_ARENA: u8 = 2;
/// Socket descriptor kind: writable output buffer (host → worker only).
pub const FD_KIND_OUTPUT: u8 = 3;
/// Socket descriptor kind: an exported CUDA allocation (POSIX fd handle).
pub const FD_KIND_CUDA: u8 = 4;
/// Socket descriptor kind: a worker's pooled, reusable output arena (no write seal).
pub const FD_KIND_POOL: u8 = 5;
/// Largest size the 7-byte `extra` field can carry (2^56 - 1).
pub const FD_EXTRA_MAX: u64 = (1 << 56) - 1;
/// Character-device major number of the NVIDIA driver (`/dev/nvidia*`).
pub const NVIDIA_MAJOR: u32 = 195;
/// Byte offset of the header `flags`.
pub const OFF_FLAGS: usize = 52;
/// Header flag: CUDA memory may cross this channel.
pub const HEADER_FLAG_CUDA: u32 = 1;
/// Header flag: the host wants immutable outputs: the worker must send write-sealed
/// (frozen) arenas, and the host refuses [`FD_KIND_POOL`] descriptors.
pub const HEADER_FLAG_FROZEN_OUTPUTS: u32 = 2;

/// Byte offset of control field `field` of ring `ring`.
pub const fn ctl(ring: usize, field: usize) -> usize {
    CONTROL_BASE + ring * CONTROL_SIZE + field
}

/// Ring sizes, as stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Slots per ring (power of two).
    pub slot_count: u32,
    /// Bytes per slot (power of two).
    pub slot_size: u32,
    /// Largest inline record payload.
    pub max_inline: u32,
}

impl Geometry {
    /// Bytes of one ring's data area.
    pub fn ring_bytes(&self) -> usize {
        self.slot_count as usize * self.slot_size as usize
    }

    /// Total memfd size.
    pub fn total_size(&self) -> usize {
        HEADER_SIZE + 2 * self.ring_bytes()
    }

    /// Byte offset of ring `i`'s data area.
    pub fn ring_offset(&self, i: usize) -> usize {
        HEADER_SIZE + i * self.ring_bytes()
    }

    /// Slots a record with `len` payload bytes occupies.
    pub fn slots_for(&self, len: usize) -> u64 {
        (RECORD_HEADER + len).div_ceil(self.slot_size as usize) as u64
    }

    /// Checks the invariants listed in the module docs; returns the field at fault.
    pub fn check(&self) -> Result<(), (&'static str, u64)> {
        let Geometry {
            slot_count,
            slot_size,
            max_inline,
        } = *self;
        if !slot_count.is_power_of_two() || !(MIN_SLOT_COUNT..=MAX_SLOT_COUNT).contains(&slot_count)
        {
            return Err(("slot_count", u64::from(slot_count)));
        }
        if !slot_size.is_power_of_two() || !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size) {
            return Err(("slot_size", u64::from(slot_size)));
        }
        if (max_inline as usize) + RECORD_HEADER > self.ring_bytes() / 2 || max_inline < 16 {
            return Err(("max_inline", u64::from(max_inline)));
        }
        Ok(())
    }
}
