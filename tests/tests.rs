//! nodecell's integration tests: one binary, one module per area.
//! `util.rs` holds shared helpers (paths to the built binary, temp dirs).

mod cli_run;
mod deps;
mod migrate;
mod provision;
mod tools_cli;
mod util;
