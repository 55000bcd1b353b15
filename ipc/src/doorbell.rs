//! Futex doorbells with adaptive spinning.
//!
//! Each doorbell is two 32-bit words in the channel memfd: `seq` (the futex word)
//! and `sleeping`. The protocol, for a peer in any language:
//!
//! * **Waiter** (the consumer waiting for data, or the producer waiting for space):
//!   spin for a while re-checking its condition; then load `s = seq` (acquire),
//!   store `sleeping = 1`, issue a full fence, re-check the condition (if it holds,
//!   store `sleeping = 0` and go on), else `futex(FUTEX_WAIT, &seq, s)` (shared, not
//!   `FUTEX_PRIVATE_FLAG`: the word lives in another process's mapping too), then
//!   store `sleeping = 0` and re-check.
//! * **Notifier**: after publishing (`head` for data, `tail` for space) issue a full
//!   fence and load `sleeping`; only if it is non-zero, store `sleeping = 0`, add 1 to
//!   `seq` (release) and `futex(FUTEX_WAKE, &seq, INT_MAX)`.
//! * **Early ring** (optional, data doorbells): a waiter may announce `sleeping = 2`
//!   instead of 1, promising that when woken (its `seq` moved) with its condition
//!   still false it spins up to [`EARLY_WAKE_SPIN`] before sleeping again. A notifier
//!   that finds `sleeping == 2` *before* it encodes and publishes may wake it then
//!   (same three steps), so the waiter's wake-up (~4 us across vCPUs here) runs while
//!   the notifier still works; the ring after publishing then finds `sleeping == 0`
//!   and makes no syscall, or finds the waiter asleep again and wakes it as usual.
//!   An early ring is never a substitute for the ring after publishing.
//!
//! The two fences make it impossible for the waiter to sleep on a condition the
//! notifier has already made true (Dekker). A notifier that never wakes only hurts
//! its own calls; a notifier that wakes too often only costs the waiter CPU.
//!
//! The spin window adapts ([`Spinner`]): when data tends to arrive shortly after the
//! waiter gave up spinning, the window doubles (up to `max`); when the waiter slept
//! long (the peer was idle), it halves (down to `min`). Past the first microseconds
//! the spin yields the CPU between checks, so a peer on the same core can run.
//!
//! A waiter whose peer runs on its own CPU does not spin at all
//! ([`Spinner::wait_hinted`]): each side writes the CPU its receiving thread runs on
//! into the header when it begins to wait (`host_cpu`, `worker_cpu` in
//! [`crate::layout`]); a peer that shares our CPU can only answer once we give the
//! CPU up, and a yield hands it to whatever else is runnable there too (EEVDF), so
//! the waiter sleeps on the futex at once: the peer runs, and its wake-up hands the
//! CPU straight back. The wait keeps its deadline and liveness checks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// `sleeping` value: the waiter is asleep (or about to be).
pub const ASLEEP: u32 = 1;
/// `sleeping` value: the waiter is asleep and, woken with nothing there, spins up to
/// [`EARLY_WAKE_SPIN`] before sleeping again (it accepts [`Doorbell::ring_early`]).
pub const ASLEEP_EARLY_OK: u32 = 2;
/// How long a waiter that accepts early rings spins after a wake-up that found nothing.
pub const EARLY_WAKE_SPIN: Duration = Duration::from_micros(50);

/// The two shared words of one doorbell.
#[derive(Debug, Clone, Copy)]
pub struct Doorbell<'a> {
    seq: &'a AtomicU32,
    sleeping: &'a AtomicU32,
}

impl<'a> Doorbell<'a> {
    /// A doorbell over two words in shared memory.
    pub fn new(seq: &'a AtomicU32, sleeping: &'a AtomicU32) -> Doorbell<'a> {
        Doorbell { seq, sleeping }
    }

    /// Notifier side: wakes the waiter if it sleeps. Call after publishing.
    pub fn ring(&self) {
        crate::ring::full_fence();
        self.ring_fenced();
    }

    /// [`Doorbell::ring`] for a caller whose publishing store was itself a full
    /// fence (a `SeqCst` read-modify-write such as `swap`).
    pub fn ring_fenced(&self) {
        if self.sleeping.load(Ordering::SeqCst) != 0 {
            self.sleeping.store(0, Ordering::Relaxed);
            self.seq.fetch_add(1, Ordering::Release);
            // A failed wake (impossible for a mapped word) leaves the waiter to its timeout.
            let _ = sys::futex_wake(self.seq, i32::MAX);
        }
    }

    /// Waiter side, step 1: announces the sleep; returns the `seq` value to wait on.
    /// The caller must re-check its condition before [`Doorbell::sleep`].
    pub fn prepare(&self) -> u32 {
        self.announce(ASLEEP)
    }

    /// [`Doorbell::prepare`] for a waiter that, woken with its condition still false,
    /// spins up to [`EARLY_WAKE_SPIN`] for it before sleeping again: a notifier may
    /// then ring it early ([`Doorbell::ring_early`]).
    pub fn prepare_for_early_ring(&self) -> u32 {
        self.announce(ASLEEP_EARLY_OK)
    }

    fn announce(&self, how: u32) -> u32 {
        let s = self.seq.load(Ordering::Acquire);
        self.sleeping.store(how, Ordering::Relaxed);
        crate::ring::full_fence();
        s
    }

    /// Notifier side, before publishing: wakes a waiter that announced it accepts
    /// early rings ([`Doorbell::prepare_for_early_ring`]), so its wake-up latency runs
    /// while the notifier still encodes and publishes. Not a substitute for
    /// [`Doorbell::ring`] after publishing (which then finds nobody asleep, unless the
    /// waiter gave up spinning and announced a sleep again). True if it woke one.
    pub fn ring_early(&self) -> bool {
        if self.sleeping.load(Ordering::Relaxed) != ASLEEP_EARLY_OK {
            return false;
        }
        self.sleeping.store(0, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
        let _ = sys::futex_wake(self.seq, i32::MAX);
        true
    }

    /// Waiter side: withdraws the announcement (condition turned true, or woke up).
    pub fn cancel(&self) {
        self.sleeping.store(0, Ordering::Relaxed);
    }

    /// Waiter side, step 2: sleeps while `seq == expected`, at most `timeout`.
    pub fn sleep(&self, expected: u32, timeout: Option<Duration>) {
        // EAGAIN (already rung), EINTR and ETIMEDOUT all mean "re-check".
        let _ = sys::futex_wait(self.seq, expected, timeout);
    }

    /// The futex word (for the host reactor's FutexWaitV).
    pub fn seq_word(&self) -> &'a AtomicU32 {
        self.seq
    }
}

/// How long to spin before sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinPolicy {
    /// Never spin: sleep at once (lowest CPU, highest latency).
    Never,
    /// Spin exactly this long.
    Fixed(Duration),
    /// Adapt between `min` and `max`, starting at `initial`.
    Adaptive {
        /// floor
        min: Duration,
        /// ceiling (should exceed the cost of a futex wake on this machine)
        max: Duration,
        /// start
        initial: Duration,
    },
}

impl Default for SpinPolicy {
    fn default() -> SpinPolicy {
        SpinPolicy::Adaptive {
            min: Duration::from_micros(2),
            max: Duration::from_micros(200),
            initial: Duration::from_micros(50),
        }
    }
}

/// Spins the first this-many nanoseconds without yielding.
const PURE_SPIN_NS: u64 = 4_000;

/// The adaptive spin state of one waiter.
#[derive(Debug, Clone)]
pub struct Spinner {
    policy: SpinPolicy,
    window_ns: u64,
    /// Busy-spin part of the window; shrinks when hits only come after yielding (the
    /// peer shares our core), grows back when hits come while busy-spinning.
    pure_ns: u64,
}

/// Why [`Spinner::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The condition holds.
    Ready,
    /// The deadline passed.
    TimedOut,
}

impl Spinner {
    /// A spinner following `policy`.
    pub fn new(policy: SpinPolicy) -> Spinner {
        let window_ns = match policy {
            SpinPolicy::Never => 0,
            SpinPolicy::Fixed(d) => d.as_nanos() as u64,
            SpinPolicy::Adaptive { initial, .. } => initial.as_nanos() as u64,
        };
        Spinner {
            policy,
            window_ns,
            pure_ns: PURE_SPIN_NS,
        }
    }

    /// The current spin window.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// Spins up to `limit` checking `ready`; true when it became ready.
    pub fn spin<E>(
        limit: Duration,
        ready: &mut impl FnMut() -> Result<bool, E>,
    ) -> Result<bool, E> {
        Ok(Spinner::spin_with(limit, PURE_SPIN_NS, ready)?.is_some())
    }

    /// Spins up to `limit` checking `ready` (never sleeps), busy only for this waiter's
    /// adaptive busy part, then yielding between checks; true when it became ready.
    /// The busy part adapts as in [`Spinner::wait`]: a peer that shares our core only
    /// answers after we yield, so busy-spinning first would just delay it.
    pub fn spin_adaptive<E>(
        &mut self,
        limit: Duration,
        ready: &mut impl FnMut() -> Result<bool, E>,
    ) -> Result<bool, E> {
        self.spin_hinted(limit, false, ready)
    }

    /// [`Spinner::spin_adaptive`]; `near`: the peer runs on this CPU, so it can only
    /// answer once we give the CPU up: yield from the first check on (and leave the
    /// busy part as it is, for when the peer is elsewhere again).
    pub fn spin_hinted<E>(
        &mut self,
        limit: Duration,
        near: bool,
        ready: &mut impl FnMut() -> Result<bool, E>,
    ) -> Result<bool, E> {
        if near {
            return Ok(Spinner::spin_with(limit, 0, ready)?.is_some());
        }
        match Spinner::spin_with(limit, self.pure_ns, ready)? {
            Some(after_yield) => {
                self.adapt_pure(after_yield);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn adapt_pure(&mut self, after_yield: bool) {
        self.pure_ns = if after_yield {
            (self.pure_ns / 2).max(64)
        } else {
            (self.pure_ns * 2).clamp(64, PURE_SPIN_NS)
        };
    }

    /// Spins up to `limit`, busy for the first `pure_ns` then yielding between checks.
    /// Returns when it became ready: `Some(true)` if only after a yield.
    fn spin_with<E>(
        limit: Duration,
        pure_ns: u64,
        ready: &mut impl FnMut() -> Result<bool, E>,
    ) -> Result<Option<bool>, E> {
        if ready()? {
            return Ok(Some(false));
        }
        let start = Instant::now();
        let mut yielded = false;
        let limit_ns = limit.as_nanos() as u64;
        let mut i: u32 = 0;
        loop {
            if ready()? {
                return Ok(Some(yielded));
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(32) || yielded {
                let el = start.elapsed().as_nanos() as u64;
                if el >= limit_ns {
                    return Ok(None);
                }
                if el >= pure_ns {
                    std::thread::yield_now();
                    yielded = true;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Waits until `ready()` is true: spins for the window, then sleeps on `bell` in
    /// slices of at most `slice` (calling `alive()` after each, which may fail the
    /// wait), until `deadline`.
    pub fn wait<E>(
        &mut self,
        bell: Doorbell<'_>,
        deadline: Option<Instant>,
        slice: Option<Duration>,
        ready: impl FnMut() -> Result<bool, E>,
        alive: impl FnMut() -> Result<(), E>,
    ) -> Result<Wake, E> {
        self.wait_hinted(bell, deadline, slice, false, ready, alive)
    }

    /// [`Spinner::wait`]; `near`: the peer runs on this CPU (see [`crate::layout`]'s
    /// `host_cpu`), so spinning or yielding would only delay it: sleep on `bell` at
    /// once. The peer then runs, and its wake-up hands the CPU straight back. The
    /// window is left as it is (it is for when the peer runs elsewhere).
    pub fn wait_hinted<E>(
        &mut self,
        bell: Doorbell<'_>,
        deadline: Option<Instant>,
        slice: Option<Duration>,
        near: bool,
        mut ready: impl FnMut() -> Result<bool, E>,
        mut alive: impl FnMut() -> Result<(), E>,
    ) -> Result<Wake, E> {
        if ready()? {
            return Ok(Wake::Ready);
        }
        // Clock reads only where something needs them: a woken waiter's path to its
        // answer is the round trip's critical path.
        let spin_ns = if near { 0 } else { self.window_ns };
        if spin_ns != 0 {
            let t0 = Instant::now();
            let mut window = Duration::from_nanos(spin_ns);
            if let Some(d) = deadline {
                window = window.min(d.saturating_duration_since(t0));
            }
            if !window.is_zero() {
                if let Some(after_yield) = Spinner::spin_with(window, self.pure_ns, &mut ready)? {
                    self.adapt_pure(after_yield);
                    self.on_spin_hit(t0.elapsed());
                    return Ok(Wake::Ready);
                }
            }
        }
        let adapt = !near && matches!(self.policy, SpinPolicy::Adaptive { .. });
        let sleep_start = adapt.then(Instant::now);
        loop {
            let seq = if near {
                bell.prepare()
            } else {
                bell.prepare_for_early_ring()
            };
            if ready()? {
                bell.cancel();
                break;
            }
            let mut t = slice;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bell.cancel();
                    return Ok(Wake::TimedOut);
                }
                t = Some(t.map_or(left, |s| s.min(left)));
            }
            bell.sleep(seq, t);
            bell.cancel();
            if ready()? {
                break;
            }
            // Rung (not a timeout) with nothing there: rung early, the data on its way.
            let rung = bell.seq_word().load(Ordering::Acquire) != seq;
            if rung
                && !near
                && Spinner::spin_with(EARLY_WAKE_SPIN, self.pure_ns, &mut ready)?.is_some()
            {
                break;
            }
            alive()?;
        }
        if let Some(t) = sleep_start {
            self.on_slept(t.elapsed());
        }
        Ok(Wake::Ready)
    }

    fn on_spin_hit(&mut self, after: Duration) {
        if let SpinPolicy::Adaptive { max, .. } = self.policy {
            // Keep at least twice what this hit needed.
            let want = (after.as_nanos() as u64).saturating_mul(2);
            self.window_ns = self.window_ns.max(want).min(max.as_nanos() as u64);
        }
    }

    fn on_slept(&mut self, slept: Duration) {
        if let SpinPolicy::Adaptive { min, max, .. } = self.policy {
            let (min, max) = (min.as_nanos() as u64, max.as_nanos() as u64);
            if (slept.as_nanos() as u64) < max {
                // The data came soon after we gave up: spinning longer would have won.
                self.window_ns = self.window_ns.saturating_mul(2).clamp(min, max);
            } else {
                // The peer was idle: spinning was wasted.
                self.window_ns = (self.window_ns / 2).clamp(min, max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    struct Words {
        seq: AtomicU32,
        sleeping: AtomicU32,
        data: AtomicBool,
    }

    fn words() -> Arc<Words> {
        Arc::new(Words {
            seq: AtomicU32::new(0),
            sleeping: AtomicU32::new(0),
            data: AtomicBool::new(false),
        })
    }

    /// A waiter told its peer shares its CPU sleeps on the futex without spinning
    /// and is woken by the notifier (arm, re-check, sleep: no lost wake-up), many
    /// times over; its spin window is left alone.
    #[test]
    fn near_waiter_sleeps_at_once_and_is_always_woken() {
        let w = words();
        let peer = {
            let w = w.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    while w.data.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                    w.data.store(true, Ordering::Release);
                    Doorbell::new(&w.seq, &w.sleeping).ring();
                }
            })
        };
        let mut sp = Spinner::new(SpinPolicy::default());
        let before = sp.window();
        let mut slept = 0;
        for _ in 0..2000 {
            let bell = Doorbell::new(&w.seq, &w.sleeping);
            let seq0 = w.seq.load(Ordering::Acquire);
            let r = sp.wait_hinted(
                bell,
                None,
                None,
                true,
                || Ok::<bool, ()>(w.data.load(Ordering::Acquire)),
                || Ok(()),
            );
            assert_eq!(r, Ok(Wake::Ready));
            if w.seq.load(Ordering::Acquire) != seq0 {
                slept += 1; // the notifier found us announced: we went to sleep
            }
            w.data.store(false, Ordering::Release);
        }
        peer.join().unwrap();
        assert_eq!(sp.window(), before);
        assert!(slept > 0, "a near waiter never announced a sleep");
        assert_eq!(w.sleeping.load(Ordering::Relaxed), 0);
    }

    /// A waiter whose deadline has already passed neither spins nor sleeps: it checks
    /// its condition once more and times out (and leaves no sleeper announced).
    #[test]
    fn a_passed_deadline_times_out_without_spinning() {
        let w = words();
        let mut sp = Spinner::new(SpinPolicy::default());
        let bell = Doorbell::new(&w.seq, &w.sleeping);
        let mut checks = 0;
        let r = sp.wait_hinted(
            bell,
            Some(Instant::now()),
            None,
            false,
            || {
                checks += 1;
                Ok::<bool, ()>(false)
            },
            || Ok(()),
        );
        assert_eq!(r, Ok(Wake::TimedOut));
        assert!(checks <= 2, "{checks} checks");
        assert_eq!(w.sleeping.load(Ordering::Relaxed), 0);
    }

    /// A near waiter still ends at its deadline, and a failing liveness check ends
    /// the wait with that error (a dead peer never rings).
    #[test]
    fn near_waiter_times_out_and_checks_liveness() {
        let w = words();
        let mut sp = Spinner::new(SpinPolicy::default());
        let bell = Doorbell::new(&w.seq, &w.sleeping);
        let deadline = Instant::now() + Duration::from_millis(20);
        let r = sp.wait_hinted(
            bell,
            Some(deadline),
            None,
            true,
            || Ok::<bool, ()>(false),
            || Ok(()),
        );
        assert_eq!(r, Ok(Wake::TimedOut));
        assert!(Instant::now() >= deadline);
        let r = sp.wait_hinted(
            bell,
            None,
            Some(Duration::from_millis(1)),
            true,
            || Ok::<bool, &str>(false),
            || Err("peer gone"),
        );
        assert_eq!(r, Err("peer gone"));
        assert_eq!(w.sleeping.load(Ordering::Relaxed), 0);
    }

    /// Early rings never lose a wake-up: a waiter that accepts them is rung before the
    /// data exists, and the notifier publishes at once, after a yield, or only after
    /// the waiter's spin after waking ran out (it then sleeps again and the ring after
    /// publishing wakes it). Every wait ends Ready before its deadline, the early ring
    /// found the waiter announced every time, and nobody is left announced.
    #[test]
    fn early_rings_never_lose_a_wake_up() {
        let w = words();
        let rounds = 300;
        let peer = {
            let w = w.clone();
            std::thread::spawn(move || {
                let mut early = 0;
                for i in 0..rounds {
                    while w.data.load(Ordering::Acquire)
                        || w.sleeping.load(Ordering::Acquire) != ASLEEP_EARLY_OK
                    {
                        std::thread::yield_now();
                    }
                    let bell = Doorbell::new(&w.seq, &w.sleeping);
                    if bell.ring_early() {
                        early += 1;
                    }
                    match i % 3 {
                        0 => {}
                        1 => std::thread::yield_now(),
                        _ => std::thread::sleep(EARLY_WAKE_SPIN * 4),
                    }
                    w.data.store(true, Ordering::Release);
                    bell.ring();
                }
                early
            })
        };
        let mut sp = Spinner::new(SpinPolicy::Never);
        for _ in 0..rounds {
            let bell = Doorbell::new(&w.seq, &w.sleeping);
            let r = sp.wait_hinted(
                bell,
                Some(Instant::now() + Duration::from_secs(20)),
                None,
                false,
                || Ok::<bool, ()>(w.data.load(Ordering::Acquire)),
                || Ok(()),
            );
            assert_eq!(r, Ok(Wake::Ready));
            w.data.store(false, Ordering::Release);
        }
        assert_eq!(peer.join().unwrap(), rounds);
        assert_eq!(w.sleeping.load(Ordering::Relaxed), 0);
    }

    /// Only a waiter that announced it accepts early rings gets one: a plain sleeper
    /// (the host reactor, a waiter whose peer shares its CPU) is left alone.
    #[test]
    fn early_ring_skips_plain_sleepers() {
        let w = words();
        let bell = Doorbell::new(&w.seq, &w.sleeping);
        let seq = bell.prepare();
        assert!(!bell.ring_early());
        assert_eq!(w.seq.load(Ordering::Relaxed), seq);
        assert_eq!(w.sleeping.load(Ordering::Relaxed), ASLEEP);
        bell.cancel();
        let seq = bell.prepare_for_early_ring();
        assert!(bell.ring_early());
        assert_eq!(w.seq.load(Ordering::Relaxed), seq.wrapping_add(1));
        assert_eq!(w.sleeping.load(Ordering::Relaxed), 0);
        assert!(!bell.ring_early(), "rung twice");
    }
}
