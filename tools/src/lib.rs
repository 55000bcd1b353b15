//! The shared facts of nodecell's developer tools (`nodecell top`, `nodecell
//! debug`, `nodecell profile`), used by the command line (the client) and by
//! the Python wheel (the host that serves them).
//!
//! * [`socket`] — where a host process publishes its tools socket
//!   (`$XDG_RUNTIME_DIR/nodecell/<pid>.sock`, mode 0600), the on/off switch,
//!   finding running hosts, and a JSON-lines [`socket::Client`].
//! * [`hist`] — the latency histogram: buckets a quarter of a power of two
//!   wide, recorded lock-free by [`hist::Histogram`], percentiles read back.
//! * [`stats`] — the snapshot a host answers to `{"op": "stats"}`
//!   ([`stats::HostStats`], [`stats::CellStats`]) and the rates and
//!   percentiles derived from two snapshots ([`stats::CellView`]).
//! * [`sample`] — what the kernel says about a cell's processes: CPU time,
//!   RSS and PSS (`/proc`), memory usage and limit (cgroup v2 or v1).
#![deny(missing_docs)]

pub mod hist;
pub mod sample;
pub mod socket;
pub mod stats;
