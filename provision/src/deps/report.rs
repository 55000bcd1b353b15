//! The human form of a [`DepsReport`]: a table per pack, then each kind of
//! finding (what `nodecell deps` prints without `--json`).

use std::fmt;

use super::{DepsReport, PackReport};

fn row(p: &PackReport) -> [String; 5] {
    let res = match &p.resolution {
        None => "-".to_string(),
        Some(r) if r.ok => format!(
            "{} dist{}{}",
            r.pins.len(),
            if r.pins.len() == 1 { "" } else { "s" },
            if r.online { " (online)" } else { "" }
        ),
        Some(_) => "FAILS".to_string(),
    };
    let numpy = p
        .resolution
        .as_ref()
        .and_then(|r| r.pins.get("numpy").cloned())
        .unwrap_or_else(|| "-".into());
    let from = if p.pack.has_manifest {
        p.pack.source.clone()
    } else {
        "inferred".to_string()
    };
    [
        p.pack.name.clone(),
        from,
        p.pack.requirements.len().to_string(),
        res,
        numpy,
    ]
}

fn table(f: &mut fmt::Formatter, head: [&str; 5], rows: &[[String; 5]]) -> fmt::Result {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (wi, c) in w.iter_mut().zip(r) {
            *wi = (*wi).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .zip(&w)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(f, "{}", line(head.to_vec()))?;
    for r in rows {
        writeln!(f, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

impl fmt::Display for DepsReport {
    /// The report as `nodecell deps` prints it.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.host {
            Some(h) => writeln!(
                f,
                "host: {} (Python {}, {} distributions installed)",
                h.python.display(),
                h.version,
                h.installed.len()
            )?,
            None => writeln!(f, "host: none given (no host checks)")?,
        }
        match &self.resolver {
            Some(r) => writeln!(f, "resolved with {r}")?,
            None => writeln!(f, "not resolved (--no-resolve): direct conflicts only")?,
        }
        writeln!(f)?;
        let rows: Vec<[String; 5]> = self.packs.iter().map(row).collect();
        table(f, ["PACK", "FROM", "REQS", "RESOLVED", "NUMPY"], &rows)?;
        for p in &self.packs {
            for n in &p.pack.notes {
                writeln!(f, "  {}: {n}", p.pack.name)?;
            }
            if let Some(r) = &p.resolution {
                if let Some(e) = r.error.as_ref().filter(|_| !r.ok) {
                    writeln!(f, "  {}: does not resolve: {e}", p.pack.name)?;
                }
            }
            if !p.left_out.is_empty() {
                writeln!(
                    f,
                    "  {}: left out of resolution (fetched when provisioning): {}",
                    p.pack.name,
                    p.left_out.join(", ")
                )?;
            }
        }

        writeln!(f, "\nconflicts between packs (they cannot share a venv):")?;
        if self.conflicts.is_empty() {
            writeln!(f, "  none")?;
        }
        for c in &self.conflicts {
            writeln!(f, "  {} + {}: {}", c.packs[0], c.packs[1], c.why)?;
            for s in &c.sides {
                writeln!(f, "      {}: {}  ({})", s.pack, s.requirement, s.from)?;
            }
        }

        if let Some(h) = &self.host {
            writeln!(
                f,
                "\nconflicts with the host ({}): what installing the pack there would change; isolated, each pack keeps its own venv:",
                h.python.display()
            )?;
            if self.host_conflicts.is_empty() {
                writeln!(f, "  none")?;
            }
            for c in &self.host_conflicts {
                let shared = if c.shared {
                    " (shared: the venv installs its own copy instead)"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  {}: {} ({}) but the host has {} {}{shared}",
                    c.pack, c.requirement, c.from, c.dist, c.host_version
                )?;
            }
            for p in self
                .packs
                .iter()
                .filter(|p| !p.differs_from_host.is_empty())
            {
                let list: Vec<String> = p
                    .differs_from_host
                    .iter()
                    .take(8)
                    .map(|(n, v, hv)| format!("{n} {v} (host {hv})"))
                    .collect();
                let more = p.differs_from_host.len().saturating_sub(8);
                writeln!(
                    f,
                    "  {}: {} resolved version(s) differ from the host's: {}{}",
                    p.pack.name,
                    p.differs_from_host.len(),
                    list.join(", "),
                    if more > 0 {
                        format!(", and {more} more")
                    } else {
                        String::new()
                    }
                )?;
            }
        }

        writeln!(f, "\nnumpy-ABI hazards (binaries built against numpy 1.x):")?;
        if self.hazards.is_empty() {
            writeln!(f, "  none")?;
        }
        for h in &self.hazards {
            let verdict = if h.kept_below_2 {
                "safe: the pack keeps numpy<2".to_string()
            } else {
                match &h.numpy {
                    Some(v) if !v.starts_with("0.") && !v.starts_with("1.") => format!(
                        "HAZARD: numpy resolves to {v}; importing it fails (numpy.core.multiarray failed to import): add numpy<2 (`nodecell migrate` writes it) or allow >={}",
                        h.first_numpy2_build
                    ),
                    Some(v) => format!("numpy resolves to {v} today, but nothing keeps it below 2: add numpy<2"),
                    None => "numpy is not kept below 2: add numpy<2".into(),
                }
            };
            writeln!(
                f,
                "  {}: {} ({}), numpy-2 builds from {}: {verdict}",
                h.pack, h.requirement, h.from, h.first_numpy2_build
            )?;
        }

        writeln!(f, "\nneeds the network to provision:")?;
        if self.network.is_empty() {
            writeln!(f, "  none (everything comes from uv's cache)")?;
        }
        for n in &self.network {
            match n.kind.as_str() {
                "not_cached" => writeln!(
                    f,
                    "  {}: {} (not in uv's cache: downloaded when provisioning)",
                    n.pack, n.what
                )?,
                k => {
                    let why = match k {
                        "vcs" => "VCS checkout",
                        "url" => "direct URL",
                        "index" => "package index",
                        k => k,
                    };
                    writeln!(f, "  {}: {} ({why}; {})", n.pack, n.what, n.from)?
                }
            }
        }

        writeln!(f, "\ncould share one venv:")?;
        for g in &self.groups {
            let what = if g.packs.len() == 1 {
                "alone"
            } else if g.one_cell {
                "one venv, one cell"
            } else {
                "one venv (sandbox settings differ: separate cells)"
            };
            writeln!(f, "  {{{}}}: {what}", g.packs.join(", "))?;
        }
        Ok(())
    }
}
