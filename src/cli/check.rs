//! `nodecell check`: what this kernel and this user can enforce.
//!
//! Lists the sandbox's features (namespaces, Landlock, seccomp, cgroups)
//! and the channel's (`nodecell_ipc::probe`). Exits 0 when every wall of
//! the default policy is available, 1 otherwise.

use serde::Serialize;

use nodecell_sandbox::probe::{self, Feature};

/// Arguments of `nodecell check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct IpcItem {
    name: String,
    available: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report {
    /// Every wall of the default policy is available.
    ok: bool,
    /// The user running the check.
    uid: u32,
    sandbox: Vec<Feature>,
    ipc: Vec<IpcItem>,
}

/// Runs `nodecell check`; returns the exit status.
pub fn main(args: CheckArgs) -> i32 {
    let sandbox = probe::probe();
    let ipc: Vec<IpcItem> = nodecell_ipc::probe::probe()
        .into_iter()
        .map(|f| IpcItem {
            name: f.name,
            available: f.available,
            detail: f.detail,
        })
        .collect();
    let ok = probe::default_policy_ok(&sandbox);
    let uid = probe::effective_uid();
    let report = Report {
        ok,
        uid,
        sandbox,
        ipc,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("nodecell check: {e}");
                return 1;
            }
        }
    } else {
        print_table(&report);
    }
    if ok {
        0
    } else {
        1
    }
}

fn print_table(r: &Report) {
    let rows: Vec<(String, &str, &str)> = r
        .sandbox
        .iter()
        .map(|f| {
            let state = match (f.available, f.default_wall) {
                (true, _) => "yes",
                (false, true) => "MISSING",
                (false, false) => "no",
            };
            (f.name.clone(), state, f.detail.as_str())
        })
        .chain(r.ipc.iter().map(|f| {
            (
                format!("ipc: {}", f.name),
                if f.available { "yes" } else { "no" },
                f.detail.as_str(),
            )
        }))
        .collect();
    let w = rows
        .iter()
        .map(|(n, _, _)| n.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!("{:<w$}  {:<7}  DETAIL", "FEATURE", "STATUS");
    for (name, state, detail) in &rows {
        println!("{name:<w$}  {state:<7}  {detail}");
    }
    if r.ipc.is_empty() {
        println!(
            "{:<w$}  {:<7}  the channel's probe reports nothing yet",
            "ipc", "-"
        );
    }
    if r.ok {
        println!("\nevery wall of the default policy is available (`nodecell run` works here)");
    } else {
        let missing: Vec<&str> = r
            .sandbox
            .iter()
            .filter(|f| f.default_wall && !f.available)
            .map(|f| f.name.as_str())
            .collect();
        println!("\nmissing walls of the default policy: {} (`nodecell run --mode best-effort` runs without them)", missing.join(", "));
    }
}
