//! The live terminal view of `nodecell top` (ratatui): a table of cells that
//! refreshes every interval, and the walls, pids and last crash of the
//! selected cell. Keys: `q`/`Esc` quit, `Up`/`Down` select.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use nodecell_tools::stats::{CellView, Observation};

use super::top::{columns, hosts, observe, row};

struct State {
    last: HashMap<u32, Observation>,
    views: Vec<CellView>,
    message: Option<String>,
    table: TableState,
    updated: Instant,
}

impl State {
    fn refresh(&mut self, pid: Option<u32>) {
        self.updated = Instant::now();
        let hs = match hosts(pid) {
            Ok(h) => h,
            Err(e) => {
                self.views.clear();
                self.last.clear();
                self.message = Some(format!("{e} (waiting)"));
                return;
            }
        };
        let mut views = Vec::new();
        let mut last = HashMap::new();
        let mut errors = Vec::new();
        for h in &hs {
            match observe(h) {
                Ok(o) => {
                    views.extend(o.views(self.last.get(&h.pid)));
                    last.insert(h.pid, o);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.message = (!errors.is_empty()).then(|| errors.join("; "));
        self.views = views;
        self.last = last;
        let n = self.views.len();
        match self.table.selected() {
            _ if n == 0 => self.table.select(None),
            None => self.table.select(Some(0)),
            Some(i) if i >= n => self.table.select(Some(n - 1)),
            _ => {}
        }
    }
}

fn wall_style(state: &str) -> Style {
    match state {
        "active" => Style::default().fg(Color::Green),
        "missing" => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        _ => Style::default().fg(Color::DarkGray),
    }
}

fn draw(f: &mut Frame, s: &mut State, interval: Duration) {
    let [title, body, detail] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(9),
    ])
    .areas(f.area());
    let hosts = s.last.len();
    let head = format!(
        " nodecell top — {} host{}, {} cell{} — every {:.1}s — q quit, ↑↓ select ",
        hosts,
        if hosts == 1 { "" } else { "s" },
        s.views.len(),
        if s.views.len() == 1 { "" } else { "s" },
        interval.as_secs_f64()
    );
    f.render_widget(
        Paragraph::new(head).style(Style::default().add_modifier(Modifier::REVERSED)),
        title,
    );

    let header = Row::new(
        columns().map(|c| Cell::from(c).style(Style::default().add_modifier(Modifier::BOLD))),
    );
    let rows: Vec<Row> = s
        .views
        .iter()
        .map(|v| {
            let r = row(v);
            let style = match v.state.as_str() {
                "crashed" => Style::default().fg(Color::Red),
                "running" if v.debugging > 0 => Style::default().fg(Color::Yellow),
                "running" => Style::default(),
                _ => Style::default().fg(Color::DarkGray),
            };
            Row::new(r.map(Cell::from)).style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(7),
        Constraint::Min(10),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(24),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(" cells "))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, body, &mut s.table);

    let mut lines: Vec<Line> = Vec::new();
    if let Some(m) = &s.message {
        lines.push(Line::from(Span::styled(
            m.clone(),
            Style::default().fg(Color::Yellow),
        )));
    }
    if let Some(v) = s.table.selected().and_then(|i| s.views.get(i)) {
        lines.push(Line::from(format!(
            "{} (host {}): {} processes, {} calls ({} errors), lifetime p50 {} p99 {}",
            v.pack,
            v.host_pid,
            v.processes,
            v.calls,
            v.errors,
            super::top::micros(v.p50_us_total),
            super::top::micros(v.p99_us_total)
        )));
        let mut spans = vec![Span::raw("walls: ")];
        for w in &v.wall_list {
            spans.push(Span::styled(w.name.clone(), wall_style(&w.state)));
            spans.push(Span::raw(" "));
        }
        lines.push(Line::from(spans));
        for w in v.wall_list.iter().filter(|w| w.state == "missing") {
            lines.push(Line::from(Span::styled(
                format!("  missing {}: {}", w.name, w.detail),
                wall_style("missing"),
            )));
        }
        if let Some(c) = &v.last_crash {
            lines.push(Line::from(Span::styled(
                format!("last crash: {c}"),
                Style::default().fg(Color::Red),
            )));
        }
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" selected ")),
        detail,
    );
}

/// One frame of the live view, rendered as text `cols` x `rows` after two
/// observations `interval` apart (`nodecell top --screen`: a capture for
/// docs and tests that looks exactly like the terminal view).
pub fn screen(
    pid: Option<u32>,
    interval: Duration,
    cols: u16,
    rows: u16,
) -> std::io::Result<String> {
    let mut s = State {
        last: HashMap::new(),
        views: Vec::new(),
        message: None,
        table: TableState::default(),
        updated: Instant::now(),
    };
    s.refresh(pid);
    std::thread::sleep(interval);
    s.refresh(pid);
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(cols, rows))?;
    t.draw(|f| draw(f, &mut s, interval))?;
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..rows {
        let mut line = String::new();
        for x in 0..cols {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Run the live view until the user quits.
pub fn run(pid: Option<u32>, interval: Duration) -> std::io::Result<()> {
    let mut s = State {
        last: HashMap::new(),
        views: Vec::new(),
        message: None,
        table: TableState::default(),
        updated: Instant::now(),
    };
    s.refresh(pid);
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        loop {
            terminal.draw(|f| draw(f, &mut s, interval))?;
            let wait = interval.saturating_sub(s.updated.elapsed());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Down => s.table.select_next(),
                        KeyCode::Up => s.table.select_previous(),
                        _ => {}
                    }
                }
            }
            if s.updated.elapsed() >= interval {
                s.refresh(pid);
            }
        }
    })();
    ratatui::restore();
    result
}
