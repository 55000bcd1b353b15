//! `nodecell venv list` and `nodecell venv gc`: look at and clean the venv cache.

use std::path::PathBuf;
use std::time::Duration;

use nodecell_provision::{default_root, CachedVenv, VenvCache};

/// Arguments of `nodecell venv`.
#[derive(clap::Args)]
pub struct VenvArgs {
    #[command(subcommand)]
    pub command: VenvCommand,
}

/// `nodecell venv` subcommands.
#[derive(clap::Subcommand)]
pub enum VenvCommand {
    /// List cached venvs: key, packs that use it, size, last use.
    List {
        /// Venv cache root [default: as for `nodecell provision`].
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// One JSON object per venv, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove venvs not used for N days (and leftovers of killed builds).
    Gc {
        /// Keep venvs used within this many days.
        #[arg(long, value_name = "N", default_value_t = 30)]
        keep_days: u64,
        /// Venv cache root [default: as for `nodecell provision`].
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `YYYY-MM-DD HH:MM UTC` from seconds since the epoch (civil-from-days).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn print_table(venvs: &[CachedVenv]) {
    println!("{:<32}  {:>10}  {:<20}  PACKS", "KEY", "SIZE", "LAST USED");
    for v in venvs {
        println!(
            "{:<32}  {:>10}  {:<20}  {}",
            v.key,
            nodecell_units::approx_size(v.size_bytes),
            utc(v.last_used_unix),
            v.packs.join(",")
        );
    }
}

/// Runs `nodecell venv`; returns the exit status.
pub fn main(args: VenvArgs) -> i32 {
    match args.command {
        VenvCommand::List { root, json } => {
            let cache = VenvCache::open(root.unwrap_or_else(default_root));
            match cache.list() {
                Ok(venvs) => {
                    if json {
                        for v in &venvs {
                            let line = serde_json::json!({
                                "key": v.key,
                                "path": v.path,
                                "packs": v.packs,
                                "size_bytes": v.size_bytes,
                                "last_used_unix": v.last_used_unix,
                                "python": v.info.python_version,
                                "share_torch": v.info.shared_torch.is_some(),
                            });
                            println!("{line}");
                        }
                    } else if venvs.is_empty() {
                        println!("no venvs in {}", cache.root().display());
                    } else {
                        print_table(&venvs);
                    }
                    0
                }
                Err(e) => {
                    eprintln!("nodecell venv list: {e}");
                    1
                }
            }
        }
        VenvCommand::Gc {
            keep_days,
            root,
            dry_run,
        } => {
            let cache = VenvCache::open(root.unwrap_or_else(default_root));
            let keep = Duration::from_secs(keep_days.saturating_mul(86_400));
            match cache.gc(keep, dry_run) {
                Ok(r) => {
                    let verb = if dry_run { "would remove" } else { "removed" };
                    for v in &r.removed {
                        println!(
                            "{verb} {} ({}, {}, last used {})",
                            v.key,
                            v.packs.join(","),
                            nodecell_units::approx_size(v.size_bytes),
                            utc(v.last_used_unix)
                        );
                    }
                    for k in &r.busy {
                        println!("skipped {k} (in use)");
                    }
                    let freed: u64 = r.removed.iter().map(|v| v.size_bytes).sum();
                    println!(
                        "{verb} {} venv(s), {}; kept {}; {} stale build(s)",
                        r.removed.len(),
                        nodecell_units::approx_size(freed),
                        r.kept,
                        r.stale_builds
                    );
                    0
                }
                Err(e) => {
                    eprintln!("nodecell venv gc: {e}");
                    1
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
