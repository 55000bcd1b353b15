//! Pooled tensor arenas: storage for tensors a process sends, reused instead of made
//! per tensor.
//!
//! A new arena costs `memfd_create`, `ftruncate`, `mmap` and a page fault per page
//! (the kernel zeroes each one): far more than copying the tensor into memory that is
//! already faulted in. So the bytes a process sends (a worker's outputs, the host's
//! first send of a private tensor) are copied once into an arena from this pool, and
//! the arena is reused once nothing needs it any more.
//!
//! * One pool per process ([`ArenaPool::global`]). Each arena in it belongs to one
//!   channel, the peer that will see its bytes, and is reused only for tensors sent on
//!   that channel: a peer keeps the fd of every arena it was sent, so an arena
//!   recycled for another peer would show that peer the first one's data. An arena
//!   shared on a second channel anyway (the host forwarding a tensor) is marked
//!   foreign and dropped, not reused, once free ([`Arena::pin_for`]).
//! * An arena is free when nothing but the pool holds it: no tensor over it in this
//!   process and no descriptor naming it outstanding at the peer. Its slot on the
//!   channel stays pinned meanwhile (the peer keeps the fd and its mapping; see
//!   [`crate::layout`]), so reusing it sends no fd.
//! * Sizes are rounded up to classes ([`size_class`], eight per doubling); a take
//!   reuses a free arena of the same class for the same channel, else makes one
//!   (pre-faulted).
//! * Free arenas beyond the pool's limit (bytes) are dropped, least recently used
//!   first; so are free arenas of closed channels.
//!
//! Worker arenas are sealed [`ArenaState::Pooled`] (the worker writes them again
//! when it reuses them: receivers must expect a tensor's bytes to change until they
//! release it; see SECURITY.md), host arenas [`ArenaState::ReadOnly`] as before.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::arena::{Arena, ArenaError};
use crate::channel::{Channel, WeakChannel};
use crate::frame::Side;

/// Default limit on the bytes of free arenas a pool keeps ([`LIMIT_VAR`] overrides it
/// for [`ArenaPool::global`]).
pub const DEFAULT_LIMIT: usize = 512 << 20;

/// The environment variable that sets [`ArenaPool::global`]'s limit: a size in the
/// project's units (`536870912`, `64MiB`, `1G`; see [`nodecell_units::parse_size`]), or
/// `0` to keep no free arenas.
pub const LIMIT_VAR: &str = "NODECELL_TENSOR_POOL";

/// A pool limit that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {source}")]
pub struct LimitError {
    /// Where the value came from (the variable's name).
    pub var: &'static str,
    /// What is wrong with it (it quotes the value).
    pub source: nodecell_units::SizeError,
}

/// Reads a pool limit written as `text` (the value of [`LIMIT_VAR`]): a size in the
/// project's units, or `0` (keep no free arenas).
pub fn parse_limit(text: &str) -> Result<usize, LimitError> {
    match nodecell_units::parse_size(text) {
        Ok(bytes) => Ok(usize::try_from(bytes).unwrap_or(usize::MAX)),
        Err(nodecell_units::SizeError::Zero { .. }) => Ok(0),
        Err(source) => Err(LimitError {
            var: LIMIT_VAR,
            source,
        }),
    }
}

/// The limit [`LIMIT_VAR`] sets in this process's environment ([`DEFAULT_LIMIT`] when
/// unset), or what is wrong with it. [`ArenaPool::global`] falls back to the default on
/// an error: callers that can report one call this first (the host when an extension
/// starts, a worker when it starts).
pub fn env_limit() -> Result<usize, LimitError> {
    match std::env::var_os(LIMIT_VAR) {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => parse_limit(&v.to_string_lossy()),
    }
}

/// Counters, for tests and `nodecell top`-like tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Takes served by a free arena.
    pub hits: u64,
    /// Takes that made a new arena.
    pub misses: u64,
    /// Arenas dropped by the pool (limit, closed channel, foreign).
    pub dropped: u64,
    /// Arenas in the pool now.
    pub arenas: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Bytes of the free ones.
    pub free_bytes: usize,
}

struct Entry {
    arena: Arc<Arena>,
    channel: WeakChannel,
    channel_id: u64,
    last_used: u64,
}

impl Entry {
    fn is_free(&self) -> bool {
        Arc::strong_count(&self.arena) == 1
    }
}

struct Inner {
    entries: Vec<Entry>,
    tick: u64,
    limit: usize,
    hits: u64,
    misses: u64,
    dropped: u64,
}

/// A pool of arenas, each bound to the channel it serves.
pub struct ArenaPool {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ArenaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArenaPool")
            .field("stats", &self.stats())
            .finish()
    }
}

/// The size class of a `len`-byte tensor: `len` rounded up to a multiple of an eighth
/// of the largest power of two not above it (at least a page), so at most 12.5% (or
/// less than a page) is wasted.
pub fn size_class(len: usize) -> usize {
    const PAGE: usize = 4096;
    let len = len.max(1);
    let floor_pow2 = 1usize << (usize::BITS - 1 - len.leading_zeros());
    let step = (floor_pow2 / 8).max(PAGE);
    len.div_ceil(step).saturating_mul(step)
}

impl ArenaPool {
    /// An empty pool keeping at most `limit` bytes of free arenas.
    pub fn new(limit: usize) -> ArenaPool {
        ArenaPool {
            inner: Mutex::new(Inner {
                entries: Vec::new(),
                tick: 0,
                limit,
                hits: 0,
                misses: 0,
                dropped: 0,
            }),
        }
    }

    /// This process's pool (limit: [`env_limit`], [`DEFAULT_LIMIT`] when that fails; see
    /// there for who reports the failure).
    pub fn global() -> &'static ArenaPool {
        static POOL: OnceLock<ArenaPool> = OnceLock::new();
        POOL.get_or_init(|| ArenaPool::new(env_limit().unwrap_or(DEFAULT_LIMIT)))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the most bytes of free arenas kept (0: keep none) and drops the excess.
    pub fn set_limit(&self, limit: usize) {
        let gone = {
            let mut g = self.lock();
            g.limit = limit;
            trim(&mut g)
        };
        release(gone);
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// How many arenas (each a memfd) the pool holds now, free or in use.
    pub fn arenas(&self) -> usize {
        self.lock().entries.len()
    }

    /// An arena of at least `len` bytes for a tensor to be sent on `channel`: a free
    /// one of the same size class bound to that channel, or a new one (pre-faulted,
    /// sealed for the channel's side). The caller writes the tensor into it through
    /// [`Arena::as_ptr`] before sending.
    pub fn take(&self, channel: &Channel, len: usize) -> Result<Arc<Arena>, ArenaError> {
        if len == 0 {
            return Err(ArenaError::Empty);
        }
        let class = size_class(len);
        let id = channel.id();
        let (found, gone) = {
            let mut g = self.lock();
            g.tick += 1;
            let tick = g.tick;
            let mut gone = sweep(&mut g);
            gone.extend(trim(&mut g));
            let found = g
                .entries
                .iter_mut()
                .filter(|e| e.channel_id == id && e.arena.len() == class && e.is_free())
                .min_by_key(|e| e.last_used)
                .map(|e| {
                    e.last_used = tick;
                    e.arena.clone()
                });
            if found.is_some() {
                g.hits += 1;
            } else {
                g.misses += 1;
            }
            (found, gone)
        };
        release(gone);
        if let Some(a) = found {
            // A lent arena whose bytes were sent was left copy-on-write here (see
            // `Arena::privatize`): shared again, or the next tensor's bytes would stay
            // in private pages the peer never sees.
            a.reshare()?;
            return Ok(a);
        }
        // Made outside the lock: faulting in a large arena takes a while.
        let arena = Arena::create(class)?;
        match channel.side() {
            Side::Host => arena.seal_read_only()?,
            Side::Worker => arena.seal_pooled()?,
        }
        arena.set_pool_owner(id);
        let gone = {
            let mut g = self.lock();
            g.tick += 1;
            let tick = g.tick;
            g.entries.push(Entry {
                arena: arena.clone(),
                channel: channel.downgrade(),
                channel_id: id,
                last_used: tick,
            });
            trim(&mut g)
        };
        release(gone);
        Ok(arena)
    }

    /// Drops free arenas that must not be reused and, least recently used first, free
    /// arenas beyond the limit. (Takes do this too; call it when arenas were freed.)
    pub fn trim(&self) {
        let gone = {
            let mut g = self.lock();
            let mut gone = sweep(&mut g);
            gone.extend(trim(&mut g));
            gone
        };
        release(gone);
    }

    /// Stops holding the arenas of channel `channel_id` (closed): free ones are
    /// dropped now, the others once the tensors over them are gone.
    pub fn forget_channel(&self, channel_id: u64) {
        let gone: Vec<Entry> = {
            let mut g = self.lock();
            let (gone, keep) = std::mem::take(&mut g.entries)
                .into_iter()
                .partition(|e| e.channel_id == channel_id);
            g.entries = keep;
            g.dropped += gone.len() as u64;
            gone
        };
        drop(gone);
    }

    /// Drops every free arena (and those of closed channels once free).
    pub fn clear(&self) {
        let gone = {
            let mut g = self.lock();
            let mut gone = sweep(&mut g);
            let mut i = 0;
            while i < g.entries.len() {
                if g.entries[i].is_free() {
                    gone.push(g.entries.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            g.dropped += gone.len() as u64;
            gone
        };
        release(gone);
    }

    /// Counters and sizes now.
    pub fn stats(&self) -> PoolStats {
        let g = self.lock();
        PoolStats {
            hits: g.hits,
            misses: g.misses,
            dropped: g.dropped,
            arenas: g.entries.len(),
            bytes: g.entries.iter().map(|e| e.arena.len()).sum(),
            free_bytes: g
                .entries
                .iter()
                .filter(|e| e.is_free())
                .map(|e| e.arena.len())
                .sum(),
        }
    }
}

/// Removes free entries that must not be reused: foreign ones and those whose channel
/// is gone or closed.
fn sweep(g: &mut Inner) -> Vec<Entry> {
    let mut gone = Vec::new();
    let mut i = 0;
    while i < g.entries.len() {
        let e = &g.entries[i];
        let dead = || e.channel.upgrade().is_none_or(|c| c.failure().is_some());
        if e.is_free() && (e.arena.is_foreign() || dead()) {
            gone.push(g.entries.swap_remove(i));
        } else {
            i += 1;
        }
    }
    g.dropped += gone.len() as u64;
    gone
}

/// Removes free entries, least recently used first, until the free bytes fit the limit.
fn trim(g: &mut Inner) -> Vec<Entry> {
    // Runs on every take (the worker heap's too): the common case, under the limit,
    // allocates nothing.
    let free_now: usize = g
        .entries
        .iter()
        .filter(|e| e.is_free())
        .map(|e| e.arena.len())
        .sum();
    if free_now <= g.limit {
        return Vec::new();
    }
    let mut free: Vec<(u64, usize)> = g
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_free())
        .map(|(i, e)| (e.last_used, i))
        .collect();
    let mut free_bytes: usize = free.iter().map(|&(_, i)| g.entries[i].arena.len()).sum();
    if free_bytes <= g.limit {
        return Vec::new();
    }
    free.sort_unstable();
    let mut drop_idx = Vec::new();
    for (_, i) in free {
        if free_bytes <= g.limit {
            break;
        }
        free_bytes -= g.entries[i].arena.len();
        drop_idx.push(i);
    }
    drop_idx.sort_unstable_by(|a, b| b.cmp(a));
    let gone: Vec<Entry> = drop_idx
        .into_iter()
        .map(|i| g.entries.swap_remove(i))
        .collect();
    g.dropped += gone.len() as u64;
    gone
}

/// Lets go of dropped entries outside the pool's lock: their channels retire the
/// slots (the peer closes its fd), then the arenas are unmapped.
fn release(gone: Vec<Entry>) {
    for e in gone {
        if let Some(ch) = e.channel.upgrade() {
            ch.unpin(&e.arena);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelConfig;

    #[test]
    fn the_limit_is_read_with_the_one_size_parser_and_a_bad_one_names_the_variable() {
        assert_eq!(parse_limit("1048576"), Ok(1 << 20));
        assert_eq!(parse_limit("64MiB"), Ok(64 << 20));
        assert_eq!(parse_limit(" 128KiB "), Ok(128 << 10));
        assert_eq!(parse_limit("1M"), Ok(1 << 20));
        assert_eq!(parse_limit("1.5G"), Ok(3 << 29));
        assert_eq!(parse_limit("0"), Ok(0), "0: keep no free arenas");
        assert_eq!(parse_limit("0MiB"), Ok(0));
        for bad in [
            "lots",
            "64 parsecs",
            "-1",
            "",
            "1e9",
            "99999999999999999999999",
        ] {
            let e = parse_limit(bad).unwrap_err();
            assert_eq!(e.var, LIMIT_VAR);
            let msg = e.to_string();
            assert!(msg.starts_with("NODECELL_TENSOR_POOL: "), "{msg}");
            assert!(
                msg.contains(&format!("{bad:?}")),
                "the value is quoted: {msg}"
            );
        }
    }

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        assert_eq!(size_class(1), 4096);
        assert_eq!(size_class(4096), 4096);
        assert_eq!(size_class(147_456), 147_456);
        assert_eq!(size_class(150_000), 163_840);
        assert_eq!(size_class(12 << 20), 12 << 20);
        assert_eq!(size_class(64 << 20), 64 << 20);
        assert_eq!(size_class((64 << 20) + 1), 72 << 20);
        for len in [1usize, 5000, 65_537, 1 << 20, 3 << 20, 12_582_913, 1 << 30] {
            let c = size_class(len);
            assert!(c >= len && (c - len) <= len / 8 + 4096, "{len} -> {c}");
        }
    }

    #[test]
    fn free_arenas_are_reused_per_channel_and_trimmed() {
        let pool = ArenaPool::new(1 << 20);
        let (a, _wa) = Channel::create(ChannelConfig::default()).unwrap();
        let (b, _wb) = Channel::create(ChannelConfig::default()).unwrap();
        let x = pool.take(&a, 100_000).unwrap();
        let xid = x.id();
        assert_eq!(x.pool_owner(), Some(a.id()));
        let y = pool.take(&a, 100_000).unwrap();
        assert_ne!(y.id(), xid, "x is still held");
        drop(x);
        let z = pool.take(&a, 99_000).unwrap();
        assert_eq!(z.id(), xid, "same class, same channel, free: reused");
        drop(z);
        let w = pool.take(&b, 100_000).unwrap();
        assert_ne!(w.id(), xid, "never reused for another channel");
        drop((y, w));
        let s = pool.stats();
        assert_eq!((s.hits, s.misses, s.arenas), (1, 3, 3));
        // Over the limit: least recently used free arenas go first.
        let big = pool.take(&a, 900_000).unwrap();
        drop(big);
        pool.trim();
        let s = pool.stats();
        assert!(s.free_bytes <= 1 << 20, "{s:?}");
        pool.set_limit(0);
        assert_eq!(pool.stats().arenas, 0);
    }

    #[test]
    fn a_privatized_arena_keeps_its_writes_private_until_reused() {
        use crate::sys::{Mapping, Protection};
        let pool = ArenaPool::new(64 << 20);
        // The worker's end: its pooled arenas are sealed without a (future) write seal.
        let (_host, fds) = Channel::create(ChannelConfig::default()).unwrap();
        let a = Channel::open(fds, ChannelConfig::default()).unwrap();
        let n = 3 * 4096;
        let x = pool.take(&a, n).unwrap();
        let (xid, ptr) = (x.id(), x.as_ptr());
        x.set_lent(true);
        x.write(0, &vec![1u8; n]).unwrap();
        assert!(!x.is_private() && !x.written_privately(0, n));
        assert!(x.privatize().unwrap(), "writable-shared: remapped");
        assert!(!x.privatize().unwrap(), "already copy-on-write");
        assert_eq!(x.as_ptr(), ptr, "same addresses");
        assert!(x.is_private() && !x.written_privately(0, n));
        // A peer's view of the memfd: what was there when it was sent.
        let peer = Mapping::map(x.fd(), n, Protection::ReadShared).unwrap();
        let m = x.mapping().unwrap();
        let mut b = vec![0u8; n];
        m.read_into(0, &mut b);
        assert!(b.iter().all(|&v| v == 1), "the owner still reads its bytes");
        m.write_from(4096, &[2u8; 4096]);
        assert!(x.written_privately(0, n) && x.written_privately(4096, 1));
        assert!(!x.written_privately(0, 4096), "only the written page");
        assert!(
            x.write(0, &[3u8; 8]).is_err(),
            "no writes the peer would not see"
        );
        peer.read_into(0, &mut b);
        assert!(
            b.iter().all(|&v| v == 1),
            "the peer never sees the owner's later writes"
        );
        drop(m);
        x.set_lent(false);
        drop(x);
        let y = pool.take(&a, n).unwrap();
        assert_eq!(
            (y.id(), y.as_ptr()),
            (xid, ptr),
            "reused, at the same addresses"
        );
        assert!(!y.is_private(), "shared again before reuse");
        y.write(0, &vec![4u8; n]).unwrap();
        peer.read_into(0, &mut b);
        assert!(
            b.iter().all(|&v| v == 4),
            "the next tensor's bytes reach the memfd"
        );
    }

    #[test]
    fn foreign_and_closed_channel_arenas_are_not_reused() {
        let pool = ArenaPool::new(64 << 20);
        let (a, _wa) = Channel::create(ChannelConfig::default()).unwrap();
        let (b, _wb) = Channel::create(ChannelConfig::default()).unwrap();
        let x = pool.take(&a, 8192).unwrap();
        assert!(x.pin_for(a.id()));
        assert!(!x.pin_for(b.id()), "shared on b too");
        assert!(x.is_foreign());
        let xid = x.id();
        drop(x);
        let y = pool.take(&a, 8192).unwrap();
        assert_ne!(y.id(), xid, "a foreign arena is dropped, not reused");
        let yid = y.id();
        drop(y);
        a.close("test");
        let z = pool.take(&b, 8192).unwrap();
        assert_ne!(z.id(), yid);
        assert_eq!(
            pool.stats().arenas,
            1,
            "the closed channel's arena was dropped"
        );
    }
}
