//! `nodecell provision PACK_DIR...`: build (or find) each pack's venv and
//! print its path and whether it was a cache hit.
//!
//! Output, one line per pack on stdout: `NAME<TAB>VENV<TAB>cache-hit|built`.
//! With `--json`, stdout carries the progress events instead, one JSON object
//! per line (`resolving`, `downloading`, `download`, `installing`, `done`,
//! `waiting`, `failed`), as `nodecell_provision::Event` serializes them. On a
//! terminal, a spinner on stderr shows what is happening.
//!
//! Exit status: 0 when every pack is ready, 1 when any failed (the error,
//! with uv's own text or the manifest's file, line and field, goes to stderr).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use nodecell_provision::{Event, EventKind, EventSink, JsonLines, Options, Pack, Provisioner};

/// Arguments of `nodecell provision`.
#[derive(clap::Args)]
pub struct ProvisionArgs {
    /// Pack folders, each with a manifest.yaml (or pyisolate.yaml, or
    /// pyproject.toml with [tool.nodecell]).
    #[arg(required = true, value_name = "PACK_DIR")]
    pub packs: Vec<PathBuf>,
    /// Print progress events as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// Venv cache root [default: $NODECELL_VENV_ROOT, else
    /// /var/cache/nodecell/venvs as root, else ~/.cache/nodecell/venvs].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The host's Python: the default interpreter for venvs, the source of a
    /// shared torch, and where uv is looked for after PATH
    /// [default: $NODECELL_HOST_PYTHON, else the active venv's python ($VIRTUAL_ENV), else /usr/bin/python3].
    #[arg(long, value_name = "PYTHON")]
    pub host_python: Option<PathBuf>,
    /// The uv executable [default: $NODECELL_UV, uv on PATH, uv next to the host's Python].
    #[arg(long, value_name = "UV")]
    pub uv: Option<PathBuf>,
    /// Install only from uv's cache; never use the network.
    #[arg(long)]
    pub offline: bool,
    /// Compile .pyc files at install time (slower build, faster first import
    /// in a read-only sandbox).
    #[arg(long)]
    pub compile_bytecode: bool,
}

/// Builds [`Options`] from the shared flags (also used by `nodecell venv`).
pub fn options(
    root: Option<PathBuf>,
    host_python: Option<PathBuf>,
    uv: Option<PathBuf>,
) -> Options {
    let host_python = host_python
        .or_else(|| {
            std::env::var_os("NODECELL_HOST_PYTHON")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(active_venv_python);
    Options {
        root,
        host_python,
        uv,
        ..Options::default()
    }
}

/// The Python of the active virtual environment (`$VIRTUAL_ENV/bin/python`), the
/// usual "host" when the CLI is run from a Studio's venv: `share_torch` then
/// shares that venv's torch rather than the system Python's.
fn active_venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty())?;
    let py = PathBuf::from(venv).join("bin").join("python");
    py.is_file().then_some(py)
}

/// A spinner on stderr that follows the events.
struct Spinner(ProgressBar);

impl EventSink for Spinner {
    fn event(&self, e: &Event) {
        let msg = match &e.kind {
            EventKind::Waiting { .. } => {
                format!("{}: waiting for another build of the same venv", e.pack)
            }
            EventKind::Resolving { requirements } => {
                format!("{}: resolving {requirements} requirement(s)", e.pack)
            }
            EventKind::Downloading { packages, .. } => {
                format!("{}: fetching {packages} package(s)", e.pack)
            }
            EventKind::Download { package, size } => {
                format!(
                    "{}: downloading {package}{}",
                    e.pack,
                    size.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
                )
            }
            EventKind::Installing { packages, .. } => {
                format!("{}: installing {packages} package(s)", e.pack)
            }
            _ => return,
        };
        self.0.set_message(msg);
    }
}

/// For `nodecell run --pack DIR`: provisions the pack (a spinner on stderr
/// when it is a terminal, quiet otherwise) and returns how to launch it.
/// Honors `NODECELL_VENV_ROOT`, `NODECELL_HOST_PYTHON`, `NODECELL_UV` and
/// uv's own variables (`UV_CACHE_DIR`, ...), like `nodecell provision`.
#[allow(dead_code)] // called by `run --pack` once it is wired
pub fn launch_settings_for_run(
    pack_dir: &std::path::Path,
) -> Result<nodecell_provision::LaunchSettings, nodecell_provision::Error> {
    let provisioner = Provisioner::new(options(None, None, None))?;
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(100));
        let spinner = Spinner(bar);
        let r = provisioner.launch_settings(pack_dir, &spinner);
        spinner.0.finish_and_clear();
        r
    } else {
        provisioner.launch_settings(pack_dir, &nodecell_provision::NoEvents)
    }
}

/// Runs `nodecell provision`; returns the exit status.
pub fn main(args: ProvisionArgs) -> i32 {
    let mut opts = options(args.root, args.host_python, args.uv);
    opts.offline = args.offline;
    opts.compile_bytecode = args.compile_bytecode;
    let provisioner = match Provisioner::new(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nodecell provision: {e}");
            return 1;
        }
    };
    let json = JsonLines::new(std::io::stdout());
    let mut failed = 0;
    for dir in &args.packs {
        let pack = match Pack::load(dir) {
            Ok(p) => p,
            Err(e) => {
                if args.json {
                    json.event(&Event {
                        pack: dir.display().to_string(),
                        key: String::new(),
                        elapsed_ms: 0,
                        kind: EventKind::Failed {
                            message: e.to_string(),
                        },
                    });
                }
                eprintln!("nodecell provision: {e}");
                failed += 1;
                continue;
            }
        };
        let result = if args.json {
            provisioner.provision(&pack, &json)
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message(format!("{}: looking up its venv", pack.manifest.name));
            let spinner = Spinner(bar);
            let r = provisioner.provision(&pack, &spinner);
            spinner.0.finish_and_clear();
            r
        } else {
            provisioner.provision(&pack, &nodecell_provision::NoEvents)
        };
        match result {
            Ok(v) => {
                if !args.json {
                    let status = if v.cache_hit { "cache-hit" } else { "built" };
                    println!("{}\t{}\t{status}", pack.manifest.name, v.path.display());
                }
            }
            Err(e) => {
                eprintln!("nodecell provision: {e}");
                failed += 1;
            }
        }
    }
    i32::from(failed > 0)
}
