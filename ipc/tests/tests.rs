//! nodecell-ipc integration tests: real forked processes, the real kernel.
//!
//! * `roundtrip`: calls, callbacks (re-entrant), many in flight, spilled frames,
//!   millions of frames through a small ring, idle workers sleeping.
//! * `tensors`: arenas, seals, zero-copy hand-off, output buffers, release/retire.
//! * `reactor`: every backend: readable events, peer death via pidfd, deadlines.
//! * `hostile`: a worker that breaks the protocol at the byte level, case by case.
mod util;

mod hostile;
mod reactor;
mod roundtrip;
mod tensors;
