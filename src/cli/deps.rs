//! `nodecell deps PACK_DIR...`: how node packs' requirements fit together
//! and with the host environment — conflicts between packs and with the
//! host, which packs could share one venv or cell, numpy-ABI hazards, what
//! needs the network — as a report or `--json` (`nodecell_provision::deps`).

use std::path::PathBuf;

use clap::Args;
use nodecell_provision::deps::{analyze, DepsOptions, Network};
use nodecell_provision::FALLBACK_PYTHON;

/// Check node packs' requirements against each other and the host.
#[derive(Args, Debug)]
pub struct DepsArgs {
    /// Pack folders (with a manifest, or not migrated yet: then what
    /// `nodecell migrate` would write is checked).
    #[arg(required = true, value_name = "PACK_DIR")]
    pub packs: Vec<PathBuf>,
    /// The host's Python, whose installed packages are the host environment
    /// and which packs resolve for [default: $NODECELL_HOST_PYTHON, else the
    /// active venv's python ($VIRTUAL_ENV), else /usr/bin/python3].
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<PathBuf>,
    /// The uv executable [default: $NODECELL_UV, uv on PATH, uv next to the host's Python].
    #[arg(long, value_name = "UV")]
    pub uv: Option<PathBuf>,
    /// The host app's folder (for packs without a manifest: what it provides is shared).
    #[arg(long, value_name = "DIR")]
    pub app: Option<PathBuf>,
    /// Resolve from uv's cache only, never online.
    #[arg(long, conflicts_with = "no_resolve")]
    pub offline: bool,
    /// Do not resolve (direct conflicts, host versions and hazards from the requirements only).
    #[arg(long)]
    pub no_resolve: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when a pack does not resolve or a numpy-ABI hazard is found.
    #[arg(long)]
    pub strict: bool,
}

/// Run `nodecell deps`.
pub fn main(args: DepsArgs) -> i32 {
    let host = super::provision::options(None, args.python.clone(), args.uv.clone())
        .host_python
        .unwrap_or_else(|| PathBuf::from(FALLBACK_PYTHON));
    let opts = DepsOptions {
        host_python: Some(host),
        uv: args.uv.clone(),
        app: args.app.clone(),
        network: if args.offline {
            Network::Never
        } else {
            Network::IfNeeded
        },
        no_resolve: args.no_resolve,
    };
    let report = match analyze(&args.packs, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nodecell deps: {e}");
            return 2;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        print!("{report}");
    }
    let failing = report
        .packs
        .iter()
        .any(|p| p.resolution.as_ref().is_some_and(|r| !r.ok))
        || report.hazards.iter().any(|h| {
            !h.kept_below_2
                && h.numpy
                    .as_deref()
                    .is_some_and(|v| !v.starts_with("0.") && !v.starts_with("1."))
        });
    if args.strict && failing {
        1
    } else {
        0
    }
}
