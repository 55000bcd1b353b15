//! `nodecell state list|rm|gc`: the per-pack layers isolated packs write into
//! instead of their own folder (`nodecell_provision::state`).

use std::path::PathBuf;
use std::time::Duration;

use nodecell_provision::state;

/// Arguments of `nodecell state`.
#[derive(clap::Args)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

/// `nodecell state` subcommands.
#[derive(clap::Subcommand)]
pub enum StateCommand {
    /// List packs' state: pack, size, files, last use.
    List {
        /// State root [default: $NODECELL_STATE_DIR, /var/lib/nodecell as root, else ~/.local/state/nodecell].
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// One JSON object per pack, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove the state of the named packs (their settings start over).
    Rm {
        /// Pack names (as `nodecell state list` shows them).
        #[arg(value_name = "PACK", required = true)]
        packs: Vec<String>,
        /// State root.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Remove the state of packs not started for N days.
    Gc {
        /// Keep state used within this many days.
        #[arg(long, value_name = "N", default_value_t = 30)]
        keep_days: u64,
        /// State root.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `nodecell state`; returns the exit status.
pub fn main(args: StateArgs) -> i32 {
    match args.command {
        StateCommand::List { root, json } => {
            let root = root.unwrap_or_else(state::default_root);
            for s in state::list(&root) {
                if json {
                    println!("{}", serde_json::to_string(&s).unwrap_or_default());
                } else {
                    println!(
                        "{:<32} {:>10} bytes {:>6} files  {}",
                        s.pack,
                        s.bytes,
                        s.files,
                        s.dir.display()
                    );
                }
            }
            0
        }
        StateCommand::Rm { packs, root } => {
            let root = root.unwrap_or_else(state::default_root);
            let mut code = 0;
            for p in packs {
                match state::remove(&root, &p) {
                    Ok(true) => eprintln!("nodecell state: removed the state of {p}"),
                    Ok(false) => eprintln!("nodecell state: {p} has no state"),
                    Err(e) => {
                        eprintln!("nodecell state: {p}: {e}");
                        code = 1;
                    }
                }
            }
            code
        }
        StateCommand::Gc {
            keep_days,
            root,
            dry_run,
        } => {
            let root = root.unwrap_or_else(state::default_root);
            match state::gc(&root, Duration::from_secs(keep_days * 86_400), dry_run) {
                Ok(gone) => {
                    for s in gone {
                        let verb = if dry_run { "would remove" } else { "removed" };
                        eprintln!("nodecell state: {verb} {} ({} bytes)", s.pack, s.bytes);
                    }
                    0
                }
                Err(e) => {
                    eprintln!("nodecell state: {e}");
                    1
                }
            }
        }
    }
}
