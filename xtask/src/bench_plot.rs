//! `cargo xtask bench plot py|ipc` (and `bench py --plot`, `bench ipc --plot`): an SVG
//! chart from the JSON a bench wrote, without running it again.
//!
//! * py: the median of every timed scenario, nodecell and pyisolate side by side on a
//!   log scale, with how many times faster nodecell is; rows that are not times (MiB,
//!   calls/s) and rows that failed are listed under the chart.
//! * ipc: every row next to its floor (the spin floor, the unix socket, memcpy, the
//!   goal), on a log scale, with the ratio and the goal of issue 3.
//!
//! Only plotters' SVG backend: text is written as SVG `<text>` (the viewer picks the
//! font), so nothing here needs a system font library.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::bench_py::{EXTRAS, SCENARIOS};

/// Arguments of `cargo xtask bench plot`.
#[derive(clap::Args)]
pub struct Args {
    /// Which bench's JSON to chart.
    #[arg(value_parser = ["py", "ipc"])]
    which: String,
    /// The JSON to read (default target/bench/<which>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The SVG to write (default: next to the JSON, <which>.svg).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `cargo xtask bench plot`.
pub fn main(args: Args) -> Result<()> {
    let json = args.json.unwrap_or_else(|| {
        crate::workspace_root().join(format!("target/bench/{}.json", args.which))
    });
    let out = args
        .out
        .unwrap_or_else(|| json.with_file_name(format!("{}.svg", args.which)));
    plot_file(&args.which, &json, &out)
}

/// Reads `json` (a bench's output) and writes the chart of `which` ("py" or "ipc") to `out`.
pub fn plot_file(which: &str, json: &Path, out: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    let chart = match which {
        "py" => py_chart(&value),
        "ipc" => ipc_chart(&value),
        other => return Err(anyhow!("no chart for bench {other:?} (py or ipc)")),
    }
    .with_context(|| format!("{}: {which} rows", json.display()))?;
    draw(&chart, out).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// One row of bars: a label, one value per series (None: not measured), and a note.
#[derive(Debug)]
pub(crate) struct Group {
    label: String,
    values: Vec<Option<f64>>,
    note: String,
}

/// What one chart shows.
#[derive(Debug)]
pub(crate) struct Chart {
    title: String,
    subtitle: String,
    x_desc: String,
    series: Vec<(String, RGBColor)>,
    groups: Vec<Group>,
    footer: Vec<String>,
}

const NODECELL: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const OTHER: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const FLOOR: RGBColor = RGBColor(0x99, 0x99, 0x99);

fn rows(json: &Value) -> Result<&Vec<Value>> {
    json["rows"]
        .as_array()
        .ok_or_else(|| anyhow!("the field \"rows\" is missing or not a list"))
}

fn median(row: Option<&Value>) -> Option<f64> {
    row.and_then(|r| r["median_ns"].as_f64())
        .filter(|v| *v > 0.0)
}

/// The py chart: scenarios in the bench's table order, then any other row names.
pub(crate) fn py_chart(json: &Value) -> Result<Chart> {
    let rows = rows(json)?;
    let find = |name: &str| rows.iter().find(|r| r["name"].as_str() == Some(name));
    // (nodecell scenario, pyisolate scenario it is compared with)
    let mut pairs: Vec<(String, String)> = SCENARIOS
        .iter()
        .map(|s| (s.to_string(), s.to_string()))
        .chain(EXTRAS.iter().map(|(n, p)| (n.to_string(), p.to_string())))
        .collect();
    for r in rows {
        let Some(name) = r["name"].as_str() else {
            continue;
        };
        let scenario = name.split_once('/').map_or(name, |(_, s)| s);
        if !pairs.iter().any(|(n, p)| n == scenario || p == scenario) {
            pairs.push((scenario.to_string(), scenario.to_string()));
        }
    }
    let mut groups = Vec::new();
    let mut footer = Vec::new();
    for (nc_name, pi_name) in &pairs {
        let nc = find(&format!("nodecell/{nc_name}"));
        let pi = (!pi_name.is_empty())
            .then(|| find(&format!("pyisolate/{pi_name}")))
            .flatten();
        if nc.is_none() && pi.is_none() {
            continue;
        }
        let label = if pi_name.is_empty() || pi_name == nc_name {
            nc_name.clone()
        } else {
            format!("{nc_name} (vs {pi_name})")
        };
        for (side, row) in [("nodecell", nc), ("pyisolate", pi)] {
            if let Some(e) = row.and_then(|r| r["error"].as_str()) {
                let e: String = e.chars().take(90).collect();
                footer.push(format!("{label}, {side}: error: {e}"));
            }
        }
        let (a, b) = (median(nc), median(pi));
        if a.is_none() && b.is_none() {
            // not a time: a value with its unit (MiB, calls/s)
            let show = |r: Option<&Value>| {
                r.and_then(|r| {
                    Some(format!(
                        "{:.0} {}",
                        r["value"].as_f64()?,
                        r["unit"].as_str()?
                    ))
                })
            };
            if let (Some(x), y) = (show(nc), show(pi)) {
                footer.push(match y {
                    Some(y) => format!("{label}: nodecell {x}, pyisolate {y}"),
                    None => format!("{label}: nodecell {x}"),
                });
            } else if let (None, Some(y)) = (show(nc), show(pi)) {
                footer.push(format!("{label}: pyisolate {y}"));
            }
            continue;
        }
        let times = |r: f64| {
            if r >= 10.0 {
                format!("{r:.1}x")
            } else {
                format!("{r:.2}x")
            }
        };
        let note = match (a, b) {
            (Some(a), Some(b)) if b >= a => format!("{} faster", times(b / a)),
            (Some(a), Some(b)) => format!("{} slower", times(a / b)),
            _ => String::new(),
        };
        groups.push(Group {
            label,
            values: vec![a, b],
            note,
        });
    }
    if groups.is_empty() {
        return Err(anyhow!("no row has a \"median_ns\""));
    }
    let meta = &json["meta"];
    let side = |s: &str| {
        let m = &meta[s];
        let load = m["loadavg_start"][0].as_f64();
        match (m["cpus"].as_f64(), load) {
            (Some(c), Some(l)) => format!("{s}: {c:.0} CPUs, load {l:.2} at start"),
            _ => format!("{s}: not run"),
        }
    };
    Ok(Chart {
        title: "cargo xtask bench py: nodecell vs pyisolate 0.10.2 (medians, log scale; shorter is faster)"
            .into(),
        subtitle: format!(
            "{}; {}; torch {}",
            side("nodecell"),
            side("pyisolate"),
            meta["host_versions"]["torch"].as_str().unwrap_or("?")
        ),
        x_desc: "median time per call (log scale)".into(),
        series: vec![("nodecell".into(), NODECELL), ("pyisolate".into(), OTHER)],
        groups,
        footer,
    })
}

/// Each ipc row, the floor it is measured against, and the goal (issue 3).
const IPC_FLOORS: &[(&str, &str, &str)] = &[
    ("ring_spin_rtt", "spin_floor_rtt", "goal <= 3x"),
    ("ring_adaptive_rtt", "spin_floor_rtt", ""),
    ("ring_futex_rtt", "uds_rtt", "goal <= 1x"),
    ("ring_throughput", "goal:200", "goal >= 5 M"),
    ("tensor_1MiB_rtt", "memcpy_64MiB", ""),
    ("tensor_64MiB_rtt", "memcpy_64MiB", "goal >= 100x"),
    ("tensor_1GiB_rtt", "tensor_1MiB_rtt", "goal <= 2x"),
    (
        "ring_adaptive_rtt_same_core",
        "spin_floor_rtt_same_core",
        "",
    ),
    ("ring_futex_rtt_same_core", "uds_rtt_same_core", ""),
    ("ring_throughput_same_core", "goal:200", ""),
];

/// The ipc chart: every row beside its floor.
pub(crate) fn ipc_chart(json: &Value) -> Result<Chart> {
    let rows = rows(json)?;
    let get = |name: &str| median(rows.iter().find(|r| r["name"].as_str() == Some(name)));
    let mut groups = Vec::new();
    let mut shown: Vec<&str> = Vec::new();
    for (row, floor, goal) in IPC_FLOORS {
        let Some(v) = get(row) else {
            continue;
        };
        let (f, floor_label) = match floor.strip_prefix("goal:") {
            Some(ns) => (ns.parse::<f64>().ok(), format!("{ns} ns goal")),
            None => (get(floor), (*floor).to_string()),
        };
        shown.push(row);
        let note = match f {
            Some(f) if row.starts_with("tensor_") && floor.starts_with("memcpy") => {
                format!("{:.0}x faster than memcpy; {goal}", f / v)
            }
            Some(_) if floor.starts_with("goal:") => {
                format!("{:.2} M frames/s; {goal}", 1e3 / v)
            }
            Some(f) => format!("{:.2}x; {goal}", v / f),
            None => format!("{floor} not measured"),
        };
        groups.push(Group {
            label: format!("{row} vs {floor_label}"),
            values: vec![Some(v), f],
            note: note.trim_end_matches("; ").to_string(),
        });
    }
    // Rows without a floor (the floors themselves, new rows) are shown alone.
    for r in rows {
        let Some(name) = r["name"].as_str() else {
            continue;
        };
        let is_floor = IPC_FLOORS.iter().any(|(_, f, _)| *f == name);
        if shown.contains(&name) || is_floor {
            continue;
        }
        if let Some(v) = median(Some(r)) {
            groups.push(Group {
                label: name.to_string(),
                values: vec![Some(v), None],
                note: String::new(),
            });
        }
    }
    if groups.is_empty() {
        return Err(anyhow!("no row has a \"median_ns\""));
    }
    Ok(Chart {
        title: "cargo xtask bench ipc: each row vs its floor (medians, log scale)".into(),
        subtitle: "rows without suffix: two processes on different cores; _same_core: on one core"
            .into(),
        x_desc: "median (ns per round trip; ring_throughput: ns per frame), log scale".into(),
        series: vec![("nodecell row".into(), NODECELL), ("floor".into(), FLOOR)],
        groups,
        footer: Vec::new(),
    })
}

/// A time for a label: "280 ns", "12.0 us", "8.80 ms", "1.20 s".
fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else {
        crate::bench_py::fmt_ns(ns)
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// Draws `chart` as an SVG file: one band per group, one horizontal bar per series.
pub(crate) fn draw(chart: &Chart, out: &Path) -> Result<()> {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let n = chart.groups.len();
    let k = chart.series.len().max(1);
    let band = 14 * k as u32 + 12;
    let (left, right, top) = (330u32, 300u32, 78u32);
    let footer_h = 18 * chart.footer.len() as u32 + 10;
    let (w, h) = (1280u32, top + band * n as u32 + 50 + footer_h);
    let values: Vec<f64> = chart
        .groups
        .iter()
        .flat_map(|g| g.values.iter().flatten().copied())
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = (
        10f64.powf((lo / 2.0).log10().floor()),
        10f64.powf((hi * 2.0).log10().ceil()),
    );

    let root = SVGBackend::new(out, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let font = |size: u32| TextStyle::from(("sans-serif", size).into_font());
    let bold = |size: u32| TextStyle::from(("sans-serif", size, FontStyle::Bold).into_font());
    root.draw(&Text::new(chart.title.clone(), (10, 8), bold(17)))
        .map_err(err)?;
    root.draw(&Text::new(
        chart.subtitle.clone(),
        (10, 32),
        font(12).color(&BLACK.mix(0.7)),
    ))
    .map_err(err)?;
    for (i, (name, color)) in chart.series.iter().enumerate() {
        let x = 10 + 160 * i as i32;
        root.draw(&Rectangle::new([(x, 52), (x + 14, 64)], color.filled()))
            .map_err(err)?;
        root.draw(&Text::new(name.clone(), (x + 20, 51), font(13)))
            .map_err(err)?;
    }

    let plot_h = band * n as u32;
    let (area, below) = root.split_vertically(top + plot_h + 45);
    let mut cc = ChartBuilder::on(&area)
        .margin_top(top)
        .margin_left(left)
        .margin_right(right)
        .x_label_area_size(40)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n as f64)
        .map_err(err)?;
    cc.configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(12)
        .x_label_formatter(&|v| fmt_ns(*v))
        .x_desc(chart.x_desc.clone())
        .label_style(font(12))
        .light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.15))
        .draw()
        .map_err(err)?;
    let bar = 0.8 / k as f64;
    for (i, g) in chart.groups.iter().enumerate() {
        let top_y = (n - i) as f64; // group 0 at the top
        for (j, v) in g.values.iter().enumerate() {
            let Some(v) = *v else { continue };
            let color = chart.series.get(j).map_or(FLOOR, |s| s.1);
            let y1 = top_y - 0.1 - bar * j as f64;
            let y0 = y1 - bar * 0.9;
            cc.draw_series(std::iter::once(Rectangle::new(
                [(lo, y0), (v, y1)],
                color.filled(),
            )))
            .map_err(err)?;
            let (px, py) = cc.backend_coord(&(v, (y0 + y1) / 2.0));
            root.draw(&Text::new(
                fmt_ns(v),
                (px + 4, py),
                font(11).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        let (px, py) = cc.backend_coord(&(lo, top_y - 0.5));
        root.draw(&Text::new(
            g.label.clone(),
            (px - 8, py),
            font(13).pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(err)?;
        let (_, py) = cc.backend_coord(&(hi, top_y - 0.5));
        root.draw(&Text::new(
            g.note.clone(),
            ((w - right) as i32 + 12, py),
            bold(13).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
        if g.values.iter().all(Option::is_none) {
            let (px, py) = cc.backend_coord(&(lo, top_y - 0.5));
            root.draw(&Text::new(
                "not measured",
                (px + 4, py),
                font(11).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
    }
    for (i, line) in chart.footer.iter().enumerate() {
        below
            .draw(&Text::new(line.clone(), (10, 4 + 18 * i as i32), font(12)))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svg_of(chart: &Chart, name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("nodecell-plot-{name}-{}", std::process::id()));
        let out = dir.join("chart.svg");
        draw(chart, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        svg
    }

    #[test]
    fn py_chart_pairs_both_sides_and_lists_values_and_errors() {
        let json = json!({"rows": [
            {"name": "nodecell/noop_rtt", "median_ns": 20000.0},
            {"name": "pyisolate/noop_rtt", "median_ns": 400000.0},
            {"name": "nodecell/noop_sync_rtt", "median_ns": 8000.0},
            {"name": "nodecell/worker_rss_mb", "value": 311.0, "unit": "MiB"},
            {"name": "pyisolate/worker_rss_mb", "value": 535.0, "unit": "MiB"},
            {"name": "pyisolate/torch_1GiB_rtt", "error": "timed out"},
            {"name": "nodecell/torch_1GiB_rtt", "median_ns": 70000.0},
            {"name": "nodecell/brand_new_row", "median_ns": 5.0e6}
        ], "meta": {"nodecell": {"cpus": 2, "loadavg_start": [0.5]}}});
        let c = py_chart(&json).unwrap();
        let labels: Vec<_> = c.groups.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "noop_rtt",
                "torch_1GiB_rtt",
                "noop_sync_rtt (vs noop_rtt)",
                "brand_new_row"
            ]
        );
        assert_eq!(c.groups[0].values, [Some(20000.0), Some(400000.0)]);
        assert_eq!(c.groups[0].note, "20.0x faster");
        assert_eq!(c.groups[1].values, [Some(70000.0), None]);
        assert!(c
            .footer
            .iter()
            .any(|f| f == "worker_rss_mb: nodecell 311 MiB, pyisolate 535 MiB"));
        assert!(c
            .footer
            .iter()
            .any(|f| f.contains("torch_1GiB_rtt, pyisolate: error: timed out")));
        assert!(c.subtitle.contains("nodecell: 2 CPUs, load 0.50"));
        assert!(c.subtitle.contains("pyisolate: not run"));
        let svg = svg_of(&c, "py");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "noop_sync_rtt (vs noop_rtt)",
            "20.0x faster",
            "20.0 us",
            "400.0 us",
            "worker_rss_mb",
        ] {
            assert!(svg.contains(text), "{text} is not in the SVG");
        }
        // one bar per measured value, in the series' colours
        assert_eq!(
            svg.matches("#1F77B4").count() - 1,
            4,
            "nodecell bars (+ the legend)"
        );
        assert_eq!(
            svg.matches("#FF7F0E").count() - 1,
            2,
            "pyisolate bars: noop_rtt twice (+ the legend)"
        );
    }

    #[test]
    fn ipc_chart_puts_each_row_beside_its_floor() {
        let json = json!({"rows": [
            {"name": "spin_floor_rtt", "median_ns": 280.0},
            {"name": "ring_spin_rtt", "median_ns": 800.0},
            {"name": "ring_futex_rtt", "median_ns": 64000.0},
            {"name": "uds_rtt", "median_ns": 67000.0},
            {"name": "ring_throughput", "median_ns": 168.0},
            {"name": "tensor_64MiB_rtt", "median_ns": 13000.0},
            {"name": "memcpy_64MiB", "median_ns": 8.8e6},
            {"name": "brand_new_rtt", "median_ns": 1000.0}
        ]});
        let c = ipc_chart(&json).unwrap();
        let g = |l: &str| c.groups.iter().find(|g| g.label == l).unwrap();
        assert_eq!(
            g("ring_spin_rtt vs spin_floor_rtt").note,
            "2.86x; goal <= 3x"
        );
        assert_eq!(
            g("ring_futex_rtt vs uds_rtt").values,
            [Some(64000.0), Some(67000.0)]
        );
        assert_eq!(g("ring_throughput vs 200 ns goal").values[1], Some(200.0));
        assert_eq!(
            g("ring_throughput vs 200 ns goal").note,
            "5.95 M frames/s; goal >= 5 M"
        );
        assert_eq!(
            g("tensor_64MiB_rtt vs memcpy_64MiB").note,
            "677x faster than memcpy; goal >= 100x"
        );
        assert_eq!(g("brand_new_rtt").values, [Some(1000.0), None]);
        assert_eq!(c.groups.len(), 5, "floors are not rows of their own");
        let svg = svg_of(&c, "ipc");
        assert!(svg.contains("ring_spin_rtt vs spin_floor_rtt"));
        assert!(
            svg.contains("280 ns") && !svg.contains("0.3 us"),
            "times under 1 us in ns"
        );
    }

    #[test]
    fn a_json_without_rows_is_refused_naming_the_field() {
        let e = py_chart(&json!({"goals": []})).unwrap_err().to_string();
        assert!(e.contains("\"rows\""), "{e}");
        let e = ipc_chart(&json!({"rows": [{"name": "x", "error": "boom"}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("median_ns"), "{e}");
    }
}
