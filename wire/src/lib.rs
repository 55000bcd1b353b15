//! The control vocabulary of nodecell, defined once.
//!
//! Two small protocols run beside the call channel (the rings of
//! `nodecell-ipc`), and both are plain JSON so that a human can read them in
//! a trace:
//!
//! * [`control`]: the messages between the host and a cell's **zygote** on its
//!   control socket (`spawn`, `kill`, `exit` one way; `ready`, `spawned`,
//!   `exited` the other), each carrying [`control::CONTROL_VERSION`];
//! * [`status`]: the two lines the launcher (`nodecell run --status-fd`)
//!   writes about a sandbox: its walls and cgroup when it is up, and how it
//!   ended.
//!
//! The launcher writes [`status`] records with these types; the Python
//! package encodes and decodes both through `_nodecell`, which calls
//! [`control::decode_request`], [`control::decode_event`] and
//! [`status::decode`]. A malformed message is a [`WireError`] naming the
//! field, never a panic.
#![deny(missing_docs)]

pub mod control;
mod error;
pub mod status;

pub use error::WireError;
