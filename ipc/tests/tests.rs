//! nodecell-ipc integration tests: real forked processes, the real kernel.
//!
//! * `roundtrip`: calls, callbacks (re-entrant), many in flight, spilled frames,
//!   millions of frames through a small ring, idle workers sleeping.
//! * `tensors`: arenas, seals, zero-copy hand-off, output buffers, release/retire.
//! * `reactor`: every backend: readable events, peer death via pidfd, deadlines.
//! * `pool`: pooled output arenas: reuse without new fds, what a worker can still do
//!   to an output it sent, what the host refuses.
//! * `hostile`: a worker that breaks the protocol at the byte level, case by case.
//! * `outbox`: the host's non-blocking sends: queue, order, reactor flushing, stalls.
mod util;

// The crate's private syscall wrappers, compiled into the tests too: a raw peer
// (the hostile worker, tampered memfds) needs memfds, seals and mappings without
// the channel's checks.
#[allow(dead_code)]
#[path = "../src/sys.rs"]
mod sys;

mod hostile;
mod outbox;
mod pool;
mod reactor;
mod roundtrip;
mod tensors;
