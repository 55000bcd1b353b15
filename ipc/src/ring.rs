//! Single-producer single-consumer rings in the channel memfd.
//!
//! [`Shm`] owns the mapping; [`Producer`] and [`Consumer`] each keep their own
//! index in process memory and read the other side's index exactly once per
//! operation, checking it before use. See [`crate::layout`] for the bytes.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::layout::{self, Geometry};
use crate::sys::{self, Mapping, Protection};
use crate::Violation;

/// The mapped channel memfd.
#[derive(Debug)]
pub struct Shm {
    fd: OwnedFd,
    map: Mapping,
    geo: Geometry,
}

impl Shm {
    /// Creates, sizes, fills the header of, and seals a new channel memfd (host side).
    pub fn create(geo: Geometry) -> std::io::Result<Shm> {
        let fd = sys::memfd_create("nodecell-channel")?;
        sys::ftruncate(fd.as_fd(), geo.total_size() as u64)?;
        let map = Mapping::map(fd.as_fd(), geo.total_size(), Protection::WriteShared)?;
        map.write_from(layout::OFF_MAGIC, &layout::MAGIC);
        map.write_from(layout::OFF_VERSION, &layout::ABI_VERSION.to_le_bytes());
        map.write_from(
            layout::OFF_HEADER_SIZE,
            &(layout::HEADER_SIZE as u32).to_le_bytes(),
        );
        map.write_from(layout::OFF_SLOT_COUNT, &geo.slot_count.to_le_bytes());
        map.write_from(layout::OFF_SLOT_SIZE, &geo.slot_size.to_le_bytes());
        map.write_from(
            layout::OFF_TOTAL_SIZE,
            &(geo.total_size() as u64).to_le_bytes(),
        );
        map.write_from(
            layout::OFF_RING0,
            &(geo.ring_offset(0) as u64).to_le_bytes(),
        );
        map.write_from(
            layout::OFF_RING1,
            &(geo.ring_offset(1) as u64).to_le_bytes(),
        );
        map.write_from(layout::OFF_MAX_INLINE, &geo.max_inline.to_le_bytes());
        sys::add_seals(
            fd.as_fd(),
            sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL,
        )?;
        Ok(Shm { fd, map, geo })
    }

    /// Validates and maps a channel memfd received from the host (worker side).
    pub fn open(fd: OwnedFd) -> Result<Shm, crate::OpenError> {
        use crate::OpenError as E;
        // Seals before size: once SHRINK|GROW are in place the size is final.
        let seals = sys::get_seals(fd.as_fd()).map_err(|_| E::NotMemfd)?;
        let need = sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL;
        if seals & need != need || seals & (sys::SEAL_WRITE | sys::SEAL_FUTURE_WRITE) != 0 {
            return Err(E::Seals { have: seals, need });
        }
        let info = sys::fstat(fd.as_fd()).map_err(|e| E::Io {
            op: "fstat channel memfd",
            source: e,
        })?;
        if !info.regular {
            return Err(E::NotMemfd);
        }
        if info.size < layout::HEADER_SIZE as u64 {
            return Err(E::Header {
                field: "file size",
                value: info.size,
            });
        }
        let head =
            Mapping::map(fd.as_fd(), layout::HEADER_SIZE, Protection::ReadShared).map_err(|e| {
                E::Io {
                    op: "mmap channel header",
                    source: e,
                }
            })?;
        let mut h = [0u8; 64];
        head.read_into(0, &mut h);
        drop(head);
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if h[..8] != layout::MAGIC {
            return Err(E::Header {
                field: "magic",
                value: u64_at(0),
            });
        }
        if u32_at(layout::OFF_VERSION) != layout::ABI_VERSION {
            return Err(E::Header {
                field: "abi_version",
                value: u64::from(u32_at(layout::OFF_VERSION)),
            });
        }
        if u32_at(layout::OFF_HEADER_SIZE) as usize != layout::HEADER_SIZE {
            return Err(E::Header {
                field: "header_size",
                value: u64::from(u32_at(layout::OFF_HEADER_SIZE)),
            });
        }
        let geo = Geometry {
            slot_count: u32_at(layout::OFF_SLOT_COUNT),
            slot_size: u32_at(layout::OFF_SLOT_SIZE),
            max_inline: u32_at(layout::OFF_MAX_INLINE),
        };
        geo.check()
            .map_err(|(field, value)| E::Header { field, value })?;
        let total = u64_at(layout::OFF_TOTAL_SIZE);
        if total != geo.total_size() as u64 || total > info.size {
            return Err(E::Header {
                field: "total_size",
                value: total,
            });
        }
        for (i, off) in [layout::OFF_RING0, layout::OFF_RING1]
            .into_iter()
            .enumerate()
        {
            if u64_at(off) != geo.ring_offset(i) as u64 {
                return Err(E::Header {
                    field: "ring offset",
                    value: u64_at(off),
                });
            }
        }
        let map =
            Mapping::map(fd.as_fd(), geo.total_size(), Protection::WriteShared).map_err(|e| {
                E::Io {
                    op: "mmap channel memfd",
                    source: e,
                }
            })?;
        Ok(Shm { fd, map, geo })
    }

    /// The ring sizes (the creator's copy; never re-read from shared memory).
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The memfd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A u64 control word.
    pub(crate) fn ctl64(&self, ring: usize, field: usize) -> &AtomicU64 {
        self.map.atomic_u64(layout::ctl(ring, field))
    }

    /// A u32 control word.
    pub(crate) fn ctl32(&self, ring: usize, field: usize) -> &AtomicU32 {
        self.map.atomic_u32(layout::ctl(ring, field))
    }

    /// A u32 word of the header page at byte offset `off`.
    pub(crate) fn header32(&self, off: usize) -> &AtomicU32 {
        self.map.atomic_u32(off)
    }

    /// The consumer's "data arrived" doorbell of ring `ring`.
    pub(crate) fn data_bell(&self, ring: usize) -> crate::doorbell::Doorbell<'_> {
        crate::doorbell::Doorbell::new(
            self.ctl32(ring, layout::CTL_DATA_SEQ),
            self.ctl32(ring, layout::CTL_DATA_SLEEPING),
        )
    }

    /// The producer's "space freed" doorbell of ring `ring`.
    pub(crate) fn space_bell(&self, ring: usize) -> crate::doorbell::Doorbell<'_> {
        crate::doorbell::Doorbell::new(
            self.ctl32(ring, layout::CTL_SPACE_SEQ),
            self.ctl32(ring, layout::CTL_SPACE_SLEEPING),
        )
    }

    fn read_wrapped(&self, ring: usize, pos: usize, dst: &mut [u8]) {
        let base = self.geo.ring_offset(ring);
        let size = self.geo.ring_bytes();
        let first = dst.len().min(size - pos);
        self.map.read_into(base + pos, &mut dst[..first]);
        if first < dst.len() {
            self.map.read_into(base, &mut dst[first..]);
        }
    }

    fn write_wrapped(&self, ring: usize, pos: usize, src: &[u8]) -> usize {
        let base = self.geo.ring_offset(ring);
        let size = self.geo.ring_bytes();
        let first = src.len().min(size - pos);
        self.map.write_from(base + pos, &src[..first]);
        if first < src.len() {
            self.map.write_from(base, &src[first..]);
            src.len() - first
        } else {
            (pos + first) % size
        }
    }
}

/// The producing end of one ring.
#[derive(Debug)]
pub struct Producer {
    shm: Arc<Shm>,
    ring: usize,
    head: u64,
    /// The consumer's tail as last read: free space is re-read only when this view
    /// says the record does not fit (saves a cache miss per record).
    cached_tail: u64,
}

/// What [`Producer::try_push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Published.
    Done,
    /// Not enough free slots now.
    Full,
}

impl Producer {
    /// The producer of ring `ring`, continuing from the head stored in the header
    /// (0 for a fresh channel).
    pub fn new(shm: Arc<Shm>, ring: usize) -> Producer {
        let head = shm.ctl64(ring, layout::CTL_HEAD).load(Ordering::Acquire);
        let cached_tail = shm.ctl64(ring, layout::CTL_TAIL).load(Ordering::Acquire);
        Producer {
            shm,
            ring,
            head,
            cached_tail,
        }
    }

    /// Writes one record (header + `parts` concatenated) if it fits, then publishes it
    /// and rings the consumer's doorbell if it sleeps.
    pub fn try_push(&mut self, kind: u16, parts: &[&[u8]]) -> Result<Push, Violation> {
        let geo = self.shm.geo;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        assert!(
            len <= geo.max_inline as usize,
            "caller spills frames above max_inline"
        );
        let need = geo.slots_for(len);
        let cap = u64::from(geo.slot_count);
        if cap - self.head.wrapping_sub(self.cached_tail) < need && self.free_slots()? < need {
            return Ok(Push::Full);
        }
        let mask = cap - 1;
        let mut pos = ((self.head & mask) as usize) * geo.slot_size as usize;
        let mut hdr = [0u8; layout::RECORD_HEADER];
        hdr[..4].copy_from_slice(&(len as u32).to_le_bytes());
        hdr[4..6].copy_from_slice(&kind.to_le_bytes());
        pos = self.shm.write_wrapped(self.ring, pos, &hdr);
        for p in parts {
            if !p.is_empty() {
                pos = self.shm.write_wrapped(self.ring, pos, p);
            }
        }
        self.head = self.head.wrapping_add(need);
        // swap: a release store that is also the full fence the doorbell protocol needs.
        self.shm
            .ctl64(self.ring, layout::CTL_HEAD)
            .swap(self.head, Ordering::SeqCst);
        self.shm.data_bell(self.ring).ring_fenced();
        Ok(Push::Done)
    }

    /// Free slots as seen now: reads the consumer's tail (once) and checks it. A
    /// consumer only ever moves its tail forward, up to the head: a tail that went
    /// backwards (a ring made to look full), passed the head, or wrapped is a
    /// violation, noticed the first time it is read.
    pub fn free_slots(&mut self) -> Result<u64, Violation> {
        let tail = self
            .shm
            .ctl64(self.ring, layout::CTL_TAIL)
            .load(Ordering::Acquire);
        let cap = u64::from(self.shm.geo.slot_count);
        // Valid tails lie in [cached_tail, head] (wrapping): the consumer cannot un-read
        // records, nor read what was not published.
        if tail.wrapping_sub(self.cached_tail) > self.head.wrapping_sub(self.cached_tail) {
            let used = self.head.wrapping_sub(tail);
            if used > cap {
                return Err(Violation::RingIndex {
                    ring: self.ring,
                    head: self.head,
                    tail,
                    capacity: cap,
                });
            }
            return Err(Violation::TailMoved {
                ring: self.ring,
                was: self.cached_tail,
                now: tail,
                head: self.head,
            });
        }
        self.cached_tail = tail;
        Ok(cap - self.head.wrapping_sub(tail))
    }

    /// The consumer's tail as last read and checked (it only moves forward).
    pub fn seen_tail(&self) -> u64 {
        self.cached_tail
    }

    /// The shared memory.
    pub fn shm(&self) -> &Arc<Shm> {
        &self.shm
    }

    /// Which ring.
    pub fn ring(&self) -> usize {
        self.ring
    }
}

/// One record popped by a [`Consumer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// An inline frame, now in the caller's buffer.
    Inline,
    /// A spilled frame: the memfd `slot` holds `len` bytes.
    Spill {
        /// socket slot id of the spill memfd
        slot: u64,
        /// frame length
        len: u64,
    },
}

/// The consuming end of one ring.
#[derive(Debug)]
pub struct Consumer {
    shm: Arc<Shm>,
    ring: usize,
    tail: u64,
    /// The producer's head as last read (and checked): re-read only once the
    /// consumer has caught up with it (saves a cache miss per record when pipelined).
    cached_head: u64,
    /// The consumer's tail, published in process memory for the host reactor (which
    /// must not trust the copy in shared memory).
    local_tail: Arc<AtomicU64>,
}

impl Consumer {
    /// The consumer of ring `ring`.
    pub fn new(shm: Arc<Shm>, ring: usize) -> Consumer {
        let tail = shm.ctl64(ring, layout::CTL_TAIL).load(Ordering::Acquire);
        Consumer {
            shm,
            ring,
            tail,
            cached_head: tail,
            local_tail: Arc::new(AtomicU64::new(tail)),
        }
    }

    /// Whether a record is (apparently) available; a corrupt head also says yes, so
    /// that the next pop reports it.
    pub fn has_data(&self) -> bool {
        self.shm
            .ctl64(self.ring, layout::CTL_HEAD)
            .load(Ordering::Acquire)
            != self.tail
    }

    /// The tail the reactor compares `head` against.
    pub fn local_tail(&self) -> Arc<AtomicU64> {
        self.local_tail.clone()
    }

    /// Pops one record: inline payload bytes replace `buf`'s contents.
    pub fn try_pop(&mut self, buf: &mut Vec<u8>) -> Result<Option<Record>, Violation> {
        let geo = self.shm.geo;
        let cap = u64::from(geo.slot_count);
        if self.cached_head == self.tail {
            let head = self
                .shm
                .ctl64(self.ring, layout::CTL_HEAD)
                .load(Ordering::Acquire);
            let avail = head.wrapping_sub(self.tail);
            if avail == 0 {
                return Ok(None);
            }
            if avail > cap {
                return Err(Violation::RingIndex {
                    ring: self.ring,
                    head,
                    tail: self.tail,
                    capacity: cap,
                });
            }
            self.cached_head = head;
        }
        let head = self.cached_head;
        let avail = head.wrapping_sub(self.tail);
        let pos = ((self.tail & (cap - 1)) as usize) * geo.slot_size as usize;
        let mut hdr = [0u8; layout::RECORD_HEADER];
        self.shm.read_wrapped(self.ring, pos, &mut hdr);
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let kind = u16::from_le_bytes([hdr[4], hdr[5]]);
        let reserved = u16::from_le_bytes([hdr[6], hdr[7]]);
        if reserved != 0 || (kind != layout::RECORD_INLINE && kind != layout::RECORD_SPILL) {
            return Err(Violation::RecordHeader { kind, reserved });
        }
        if len > geo.max_inline {
            return Err(Violation::RecordLength {
                len: u64::from(len),
                limit: u64::from(geo.max_inline),
            });
        }
        let need = geo.slots_for(len as usize);
        if need > avail {
            return Err(Violation::RecordLength {
                len: u64::from(len),
                limit: avail * u64::from(geo.slot_size),
            });
        }
        let data_pos = (pos + layout::RECORD_HEADER) % geo.ring_bytes();
        let rec = if kind == layout::RECORD_INLINE {
            buf.clear();
            buf.resize(len as usize, 0);
            self.shm.read_wrapped(self.ring, data_pos, buf);
            Record::Inline
        } else {
            if len != 16 {
                return Err(Violation::RecordLength {
                    len: u64::from(len),
                    limit: 16,
                });
            }
            let mut p = [0u8; 16];
            self.shm.read_wrapped(self.ring, data_pos, &mut p);
            let mut a = [0u8; 8];
            a.copy_from_slice(&p[..8]);
            let slot = u64::from_le_bytes(a);
            a.copy_from_slice(&p[8..]);
            Record::Spill {
                slot,
                len: u64::from_le_bytes(a),
            }
        };
        self.tail = self.tail.wrapping_add(need);
        self.local_tail.store(self.tail, Ordering::Release);
        // swap: release store + the full fence the doorbell protocol needs.
        self.shm
            .ctl64(self.ring, layout::CTL_TAIL)
            .swap(self.tail, Ordering::SeqCst);
        self.shm.space_bell(self.ring).ring_fenced();
        Ok(Some(rec))
    }

    /// The shared memory.
    pub fn shm(&self) -> &Arc<Shm> {
        &self.shm
    }

    /// Which ring.
    pub fn ring(&self) -> usize {
        self.ring
    }
}

/// A full fence, exported for the doorbell protocol.
pub(crate) fn full_fence() {
    fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> (Producer, Arc<Shm>) {
        let geo = Geometry {
            slot_count: 16,
            slot_size: 64,
            max_inline: 256,
        };
        let shm = Arc::new(Shm::create(geo).unwrap());
        (Producer::new(shm.clone(), 0), shm)
    }

    fn set_tail(shm: &Shm, t: u64) {
        shm.ctl64(0, layout::CTL_TAIL).store(t, Ordering::Release);
    }

    #[test]
    fn tail_may_only_move_forward_up_to_the_head() {
        let (mut p, shm) = producer();
        for _ in 0..10 {
            assert_eq!(
                p.try_push(layout::RECORD_INLINE, &[&[7u8; 8]]),
                Ok(Push::Done)
            );
        }
        // A consumer that read 4 records: fine, and the tail is remembered.
        set_tail(&shm, 4);
        assert_eq!(p.free_slots(), Ok(10));
        assert_eq!(p.seen_tail(), 4);
        // Made to look full by moving the tail back: refused at once.
        set_tail(&shm, 10u64.wrapping_sub(16));
        assert!(matches!(
            p.free_slots(),
            Err(Violation::TailMoved {
                was: 4,
                head: 10,
                ..
            })
        ));
        // Back by one, still within the ring's capacity of the head: refused too.
        set_tail(&shm, 3);
        assert!(matches!(p.free_slots(), Err(Violation::TailMoved { .. })));
        // Past the head, or half the counter space away: impossible indices.
        for t in [11, 10 + (1 << 63), u64::MAX] {
            set_tail(&shm, t);
            assert!(
                matches!(
                    p.free_slots(),
                    Err(Violation::RingIndex { .. } | Violation::TailMoved { .. })
                ),
                "tail {t}"
            );
        }
        // The real tail again: fine (the producer kept its last good view).
        set_tail(&shm, 10);
        assert_eq!(p.free_slots(), Ok(16));
    }

    #[test]
    fn counters_wrap_around_u64() {
        let (mut p, shm) = producer();
        // Start just below the wrap: head and tail both at 2^64 - 3.
        let start = u64::MAX - 2;
        shm.ctl64(0, layout::CTL_HEAD)
            .store(start, Ordering::Release);
        set_tail(&shm, start);
        let (mut p2, _) = (Producer::new(shm.clone(), 0), ());
        std::mem::swap(&mut p, &mut p2);
        for _ in 0..8 {
            assert_eq!(
                p.try_push(layout::RECORD_INLINE, &[&[1u8; 8]]),
                Ok(Push::Done)
            );
        }
        set_tail(&shm, start.wrapping_add(5));
        assert_eq!(p.free_slots(), Ok(13));
        set_tail(&shm, start.wrapping_add(8));
        assert_eq!(p.free_slots(), Ok(16));
    }
}
