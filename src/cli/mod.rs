//! One module per subcommand. Each exposes `Args` (clap) and `main(args) -> i32`.
pub mod check;
pub mod migrate;
pub mod provision;
pub mod run;
pub mod venv;
