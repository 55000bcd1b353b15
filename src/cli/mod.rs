//! One module per subcommand. Each exposes `Args` (clap) and `main(args) -> i32`.
pub mod check;
pub mod debug;
pub mod deps;
pub mod migrate;
pub mod profile;
pub mod provision;
pub mod run;
pub mod state;
pub mod top;
mod top_ui;
pub mod venv;
