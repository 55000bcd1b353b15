//! The YAML writer: renders the report as the manifest's text (comments
//! say where each value came from).

use std::fmt::Write as _;

use super::{Finding, Inferred, MigrateReport};

/// A YAML scalar: plain when that reads back the same, else double-quoted
/// (JSON string syntax is valid YAML).
fn scalar(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-=<>!~,+/@*[]:".contains(c))
        && !s.ends_with(':')
        && s.parse::<f64>().is_err()
        && !s
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// Always quoted (a version such as `1.0` must stay a string).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// One line of comment text: no control characters.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(super) fn render(r: &MigrateReport) -> String {
    let mut y = String::new();
    let from = if r.sources.is_empty() {
        "the pack's folder".to_string()
    } else {
        r.sources.join(", ")
    };
    let _ = writeln!(
        y,
        "# Written by `nodecell migrate` from {}.",
        comment(&from)
    );
    let _ = writeln!(
        y,
        "# Review it: entries marked \"please check\" are guesses; what could not be inferred is listed at the end."
    );
    let with = |v: &Inferred<String>| match &v.note {
        Some(n) => comment(&format!("{}; {n}", v.from)),
        None => comment(&v.from),
    };
    let _ = writeln!(y, "name: {}  # {}", scalar(&r.name.value), with(&r.name));
    if let Some(v) = &r.version {
        let _ = writeln!(y, "version: {}  # {}", quoted(&v.value), with(v));
    }
    let _ = writeln!(
        y,
        "isolated: {}  # {}",
        r.isolated.value,
        comment(&r.isolated.from)
    );
    let _ = writeln!(
        y,
        "share_torch: {}  # {}",
        r.share_torch.value,
        comment(&r.share_torch.from)
    );
    if r.dependencies.is_empty() {
        let _ = writeln!(y, "dependencies: []");
    } else {
        let _ = writeln!(y, "dependencies:");
        for d in &r.dependencies {
            let _ = writeln!(y, "  - {}  # {}", scalar(&d.value), with(d));
        }
    }
    if !r.shared.is_empty() {
        let app = r
            .app
            .as_ref()
            .map(|a| a.value.as_str())
            .unwrap_or("the host app");
        let _ = writeln!(
            y,
            "shared:  # provided by {}: taken from the host, not reinstalled (a version the host's copy does not satisfy is installed)",
            comment(app)
        );
        for d in &r.shared {
            let _ = writeln!(y, "  - {}  # {}", scalar(&d.value), comment(&d.from));
        }
    }
    if !r.limits.is_empty() {
        let _ = writeln!(
            y,
            "sandbox:  # defaults written by nodecell migrate: review them"
        );
        for (k, v) in &r.limits {
            let _ = writeln!(y, "  {k}: {v}");
        }
    }
    if let Some(u) = &r.index_url {
        let _ = writeln!(y, "index_url: {}  # {}", scalar(&u.value), with(u));
    }
    for (key, list) in [
        ("extra_index_urls", &r.extra_index_urls),
        ("find_links", &r.find_links),
    ] {
        if !list.is_empty() {
            let _ = writeln!(y, "{key}:");
            for u in list {
                let _ = writeln!(y, "  - {}  # {}", scalar(&u.value), with(u));
            }
        }
    }
    let left: Vec<&Finding> = r.dropped.iter().chain(&r.not_inferred).collect();
    if !left.is_empty() {
        let _ = writeln!(y, "\n# Left out:");
        for f in left {
            let text = if f.text.is_empty() {
                String::new()
            } else {
                format!("{}  ", f.text)
            };
            let _ = writeln!(
                y,
                "#   {}({}): {}",
                comment(&text),
                comment(&f.from),
                comment(&f.message)
            );
        }
    }
    y
}
