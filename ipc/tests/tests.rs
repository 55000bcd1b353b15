//! nodecell-ipc integration tests: real forked processes, the real kernel.
//!
//! * `roundtrip`: calls, callbacks (re-entrant), many in flight, spilled frames,
//!   millions of frames through a small ring, idle workers sleeping.
//! * `tensors`: arenas, seals, zero-copy hand-off, output buffers, release/retire.
//! * `reactor`: every backend: readable events, peer death via pidfd, deadlines.
//! * `hostile`: a worker that breaks the protocol at the byte level, case by case.
//! * `outbox`: the host's non-blocking sends: queue, order, reactor flushing, stalls.
mod util;

mod hostile;
mod outbox;
mod reactor;
mod roundtrip;
mod tensors;
