//! `nodecell migrate PACK_DIR [--app DIR] [--force] [--dry-run] [--json]`: write a
//! `manifest.yaml` for an existing ComfyUI-style custom-node pack from its
//! `requirements.txt`, `pyproject.toml` and `install.py`
//! (`nodecell_provision::migrate`).
//!
//! Output: the report (what was inferred, from where, what was left out and
//! why) on stderr; with `--dry-run` the manifest goes to stdout instead of
//! the file. With `--json`, stdout carries one JSON object: the report
//! (`manifest` holds the text), or `{"error": ...}`.
//!
//! Exit status: 0 when the manifest was written (or printed), 1 when the
//! path is not a folder, the pack already has a `manifest.yaml` (or
//! `manifest.yml`) and `--force` was not given, or writing failed. Lines that
//! could not be used do not fail the command: the report lists them (and the
//! written file lists them as comments at its end).

use std::path::PathBuf;

use nodecell_provision::migrate::{migrate, MigrateError, MigrateOptions};

/// Arguments of `nodecell migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The pack's folder (holding requirements.txt, pyproject.toml or install.py).
    #[arg(value_name = "PACK_DIR")]
    pub pack: PathBuf,
    /// Replace an existing manifest.yaml.
    #[arg(long)]
    pub force: bool,
    /// Print the manifest on stdout instead of writing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The host app's folder (ComfyUI's): what its requirements.txt provides is
    /// written as shared. Default: the app the pack sits in (APP/custom_nodes/PACK).
    #[arg(long, value_name = "DIR")]
    pub app: Option<PathBuf>,
}

/// Runs `nodecell migrate`; returns the exit status.
pub fn main(args: MigrateArgs) -> i32 {
    let opts = MigrateOptions {
        force: args.force,
        dry_run: args.dry_run,
        app: args.app,
    };
    match migrate(&args.pack, opts) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("nodecell migrate: cannot encode the report: {e}");
                        return 1;
                    }
                }
            } else {
                if args.dry_run {
                    print!("{}", report.manifest);
                }
                for line in report.to_string().lines() {
                    eprintln!("nodecell migrate: {line}");
                }
            }
            0
        }
        Err(e) => {
            if args.json {
                let kind = match &e {
                    MigrateError::NotAPack { .. } => "not_a_pack",
                    MigrateError::Exists { .. } => "exists",
                    MigrateError::Io { .. } => "io",
                    _ => "bug",
                };
                println!(
                    "{}",
                    serde_json::json!({ "error": e.to_string(), "kind": kind })
                );
            }
            eprintln!("nodecell migrate: {e}");
            1
        }
    }
}
