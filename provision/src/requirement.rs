//! Dependency strings: PEP 508 requirements (`numpy==1.26.4`,
//! `torch>=2.0.0,<3.0`, `pkg[extra] @ https://...; python_version >= "3.10"`),
//! bare VCS/URL requirements (`git+https://github.com/org/repo.git@v1.0`) and
//! local paths (`./vendor/pkg`), plus the environment markers used in
//! installed packages' metadata.
//!
//! Parsing here exists to reject a bad string with a message that says what
//! was expected (uv still does the real work), to normalize the list for the
//! cache key, and to walk the host torch's dependency closure.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pep440::{check_specifier, Op, Version};

/// Normalizes a distribution or extra name (PEP 503): lower case, runs of
/// `-`, `_`, `.` become one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Where a requirement comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// From the package index, with version specifiers (may be empty).
    Index(Vec<(Op, String)>),
    /// A direct URL: `git+https://...`, `https://.../x.whl`, `file:///...`.
    Url(String),
    /// A local path, relative to the pack's folder unless absolute.
    Path(PathBuf),
}

/// One parsed dependency string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    raw: String,
    /// The normalized distribution name; `None` for a bare URL or path, whose
    /// name only the build reveals.
    pub name: Option<String>,
    /// Requested extras, normalized and sorted.
    pub extras: Vec<String>,
    /// Index (with specifiers), URL or path.
    pub source: Source,
    /// The environment marker after `;`, if any.
    pub marker: Option<Marker>,
}

const URL_PREFIXES: [&str; 7] = [
    "git+", "hg+", "svn+", "bzr+", "http://", "https://", "file:",
];

fn invalid(raw: &str, pos: usize, expected: impl fmt::Display) -> String {
    format!(
        "invalid requirement {raw:?}: {expected} (at column {})",
        pos + 1
    )
}

fn check_url(raw: &str, url: &str, pos: usize) -> Result<(), String> {
    if url.starts_with("git+") && !url[4..].contains("://") {
        return Err(invalid(
            raw,
            pos,
            "expected git+<scheme>://... (for example git+https:// or git+file://)",
        ));
    }
    let scheme_end = url.find("://");
    let ok_scheme = match scheme_end {
        Some(i) => {
            let scheme = &url[..i];
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && url.len() > i + 3
        }
        // `file:/abs/path` is accepted by pip and uv.
        None => url.starts_with("file:/"),
    };
    if !ok_scheme {
        return Err(invalid(
            raw,
            pos,
            "expected a URL such as git+https://host/org/repo.git@v1.0 or https://host/pkg.whl",
        ));
    }
    Ok(())
}

impl Requirement {
    /// Parses one dependency string; the error says what was expected.
    pub fn parse(raw: &str) -> Result<Requirement, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("invalid requirement \"\": expected a package name, URL or path".into());
        }
        if s.starts_with('-') {
            return Err(format!(
                "invalid requirement {raw:?}: expected a package requirement, not a pip/uv option \
                 (options such as -e, -r, --index-url are not allowed in dependencies; \
                 use the manifest's index_url / extra_index_urls / find_links)"
            ));
        }
        let lead = raw.len() - raw.trim_start().len();
        // Bare URL or path: `git+https://...@v1.0`, `./pkg`, `/abs/pkg.whl`.
        let (head, marker_text) = split_marker(s);
        if URL_PREFIXES.iter().any(|p| s.starts_with(p)) {
            if head.contains(char::is_whitespace) {
                return Err(invalid(
                    raw,
                    lead,
                    "expected a URL without spaces (put `; marker` after a space)",
                ));
            }
            check_url(raw, head, lead)?;
            let marker = parse_marker_opt(raw, marker_text, s)?;
            return Ok(Requirement {
                raw: raw.to_string(),
                name: None,
                extras: vec![],
                source: Source::Url(head.to_string()),
                marker,
            });
        }
        if s.starts_with("./") || s.starts_with("../") || s.starts_with('/') {
            if head.contains(char::is_whitespace) {
                return Err(invalid(raw, lead, "expected a path without spaces"));
            }
            let marker = parse_marker_opt(raw, marker_text, s)?;
            return Ok(Requirement {
                raw: raw.to_string(),
                name: None,
                extras: vec![],
                source: Source::Path(PathBuf::from(head)),
                marker,
            });
        }

        // PEP 508: name [extras] (@ url | specifiers) [; marker]
        let mut p = Cursor {
            s,
            pos: 0,
            raw,
            lead,
        };
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .unwrap_or(s.len());
        let name = &s[..name_end];
        if name.is_empty() {
            return Err(p.err("expected a package name (letters, digits, `-`, `_`, `.`)"));
        }
        if !is_valid_name(name) {
            return Err(p.err(format!(
                "expected a package name that starts and ends with a letter or digit, found `{name}`"
            )));
        }
        p.pos = name_end;
        p.skip_ws();
        let mut extras = Vec::new();
        if p.peek() == Some('[') {
            p.pos += 1;
            loop {
                p.skip_ws();
                if p.peek() == Some(']') {
                    p.pos += 1;
                    break;
                }
                let rest = p.rest();
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                    .unwrap_or(rest.len());
                let extra = &rest[..end];
                if extra.is_empty() || !is_valid_name(extra) {
                    return Err(p.err("expected an extra name inside `[...]`"));
                }
                extras.push(normalize_name(extra));
                p.pos += end;
                p.skip_ws();
                match p.peek() {
                    Some(',') => p.pos += 1,
                    Some(']') => {
                        p.pos += 1;
                        break;
                    }
                    _ => return Err(p.err("expected `,` or `]` in the extras list")),
                }
            }
            extras.sort();
            extras.dedup();
            p.skip_ws();
        }
        let source;
        if p.peek() == Some('@') {
            p.pos += 1;
            p.skip_ws();
            let rest = p.rest();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let url = &rest[..end];
            if url.is_empty() {
                return Err(p.err("expected a URL after `@`"));
            }
            check_url(raw, url, lead + p.pos)?;
            source = Source::Url(url.to_string());
            p.pos += end;
            p.skip_ws();
        } else {
            let mut specs = Vec::new();
            let parens = p.peek() == Some('(');
            if parens {
                p.pos += 1;
            }
            loop {
                p.skip_ws();
                let rest = p.rest();
                let Some((op, after)) = Op::split(rest) else {
                    if specs.is_empty() && !parens {
                        break;
                    }
                    return Err(
                        p.err("expected a version operator (==, !=, <, <=, >, >=, ~=, ===)")
                    );
                };
                p.pos += rest.len() - after.len();
                p.skip_ws();
                let rest = p.rest();
                let end = rest
                    .find(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ')'))
                    .unwrap_or(rest.len());
                let version = &rest[..end];
                check_specifier(op, version).map_err(|e| p.err(e))?;
                specs.push((op, version.to_string()));
                p.pos += end;
                p.skip_ws();
                if p.peek() == Some(',') {
                    p.pos += 1;
                    continue;
                }
                break;
            }
            if parens {
                if p.peek() != Some(')') {
                    return Err(p.err("expected `)` after the version specifiers"));
                }
                p.pos += 1;
                p.skip_ws();
            }
            source = Source::Index(specs);
        }
        let marker = match p.peek() {
            None => None,
            Some(';') => {
                p.pos += 1;
                let text = p.rest();
                if text.trim().is_empty() {
                    return Err(p.err("expected an environment marker after `;`"));
                }
                Some(Marker::parse(text).map_err(|(col, e)| invalid(raw, lead + p.pos + col, e))?)
            }
            Some(c) => {
                let no_specs = matches!(&source, Source::Index(v) if v.is_empty());
                let what = if matches!(c, '=' | '<' | '>' | '!' | '~') {
                    "expected a valid version operator (==, !=, <, <=, >, >=, ~=, ===)".to_string()
                } else if no_specs && c.is_ascii_digit() {
                    "expected a version operator (such as `==` or `>=`) before the version"
                        .to_string()
                } else if !no_specs {
                    format!("unexpected `{c}`: expected `,` between version specifiers, or `; marker` after them")
                } else {
                    format!("unexpected `{c}`: expected a version specifier, `[extras]`, `@ url` or `; marker`")
                };
                return Err(p.err(what));
            }
        };
        Ok(Requirement {
            raw: raw.to_string(),
            name: Some(normalize_name(name)),
            extras,
            source,
            marker,
        })
    }

    /// The string as written in the manifest.
    pub fn as_written(&self) -> &str {
        &self.raw
    }

    /// The argument handed to uv: as written, except that a local path is
    /// made absolute against `base` (the pack's folder).
    pub fn uv_arg(&self, base: &Path) -> String {
        match &self.source {
            Source::Path(p) => {
                let mut s = base.join(p).to_string_lossy().into_owned();
                if let Some(m) = &self.marker {
                    s.push_str(" ; ");
                    s.push_str(&m.to_string());
                }
                s
            }
            _ => self.raw.trim().to_string(),
        }
    }

    /// The normalized form used in the cache key: same meaning, same string.
    /// Local paths are resolved against `base` (the pack's folder).
    pub fn canonical(&self, base: &Path) -> String {
        let mut out = String::new();
        match (&self.name, &self.source) {
            (Some(name), Source::Index(specs)) => {
                out.push_str(name);
                push_extras(&mut out, &self.extras);
                let mut specs: Vec<String> = specs
                    .iter()
                    .map(|(op, v)| format!("{}{}", op.as_str(), v.to_ascii_lowercase()))
                    .collect();
                specs.sort();
                specs.dedup();
                out.push_str(&specs.join(","));
            }
            (Some(name), Source::Url(url)) => {
                out.push_str(name);
                push_extras(&mut out, &self.extras);
                out.push_str(" @ ");
                out.push_str(url);
            }
            (_, Source::Url(url)) => out.push_str(url),
            (_, Source::Path(p)) => out.push_str(&base.join(p).to_string_lossy()),
            (None, Source::Index(_)) => out.push_str(self.raw.trim()),
        }
        if let Some(m) = &self.marker {
            // A space before `;` keeps URLs unambiguous.
            out.push_str(" ; ");
            out.push_str(&m.to_string());
        }
        out
    }
}

fn push_extras(out: &mut String, extras: &[String]) {
    if !extras.is_empty() {
        out.push('[');
        out.push_str(&extras.join(","));
        out.push(']');
    }
}

/// Splits `url ; marker` (a marker after a URL must follow whitespace).
fn split_marker(s: &str) -> (&str, Option<&str>) {
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b';' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return (s[..i].trim_end(), Some(&s[i + 1..]));
        }
    }
    (s, None)
}

fn parse_marker_opt(raw: &str, text: Option<&str>, s: &str) -> Result<Option<Marker>, String> {
    match text {
        None => Ok(None),
        Some(t) if t.trim().is_empty() => Err(invalid(
            raw,
            s.len(),
            "expected an environment marker after `;`",
        )),
        Some(t) => {
            let off = s.len() - t.len();
            Marker::parse(t)
                .map(Some)
                .map_err(|(col, e)| invalid(raw, off + col, e))
        }
    }
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
    raw: &'a str,
    lead: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn skip_ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }
    fn err(&self, expected: impl fmt::Display) -> String {
        invalid(self.raw, self.lead + self.pos, expected)
    }
}

impl<'de> Deserialize<'de> for Requirement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Requirement;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a requirement string such as \"numpy==1.26.4\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Requirement, E> {
                Requirement::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Requirement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.raw.trim())
    }
}

/// The values environment markers are evaluated against (PEP 508), read from
/// an interpreter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerEnv {
    /// `implementation_name`, e.g. `cpython`.
    pub implementation_name: String,
    /// `implementation_version`, e.g. `3.11.2`.
    pub implementation_version: String,
    /// `os_name`, e.g. `posix`.
    pub os_name: String,
    /// `platform_machine`, e.g. `x86_64`.
    pub platform_machine: String,
    /// `platform_python_implementation`, e.g. `CPython`.
    pub platform_python_implementation: String,
    /// `platform_release` (kernel release).
    pub platform_release: String,
    /// `platform_system`, e.g. `Linux`.
    pub platform_system: String,
    /// `platform_version`.
    pub platform_version: String,
    /// `python_full_version`, e.g. `3.11.2`.
    pub python_full_version: String,
    /// `python_version`, e.g. `3.11`.
    pub python_version: String,
    /// `sys_platform`, e.g. `linux`.
    pub sys_platform: String,
}

impl MarkerEnv {
    fn get(&self, var: &str) -> Option<&str> {
        Some(match var {
            "implementation_name" => &self.implementation_name,
            "implementation_version" => &self.implementation_version,
            "os_name" | "os.name" => &self.os_name,
            "platform_machine" | "platform.machine" => &self.platform_machine,
            "platform_python_implementation"
            | "platform.python_implementation"
            | "python_implementation" => &self.platform_python_implementation,
            "platform_release" => &self.platform_release,
            "platform_system" => &self.platform_system,
            "platform_version" | "platform.version" => &self.platform_version,
            "python_full_version" => &self.python_full_version,
            "python_version" => &self.python_version,
            "sys_platform" | "sys.platform" => &self.sys_platform,
            _ => return None,
        })
    }
}

const MARKER_VARS: [&str; 17] = [
    "implementation_name",
    "implementation_version",
    "os_name",
    "os.name",
    "platform_machine",
    "platform.machine",
    "platform_python_implementation",
    "platform.python_implementation",
    "python_implementation",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform.version",
    "python_full_version",
    "python_version",
    "sys_platform",
    "sys.platform",
];

/// A parsed environment marker (`python_version < "3.15" and extra == "cuda"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// Both sides hold.
    And(Box<Marker>, Box<Marker>),
    /// Either side holds.
    Or(Box<Marker>, Box<Marker>),
    /// `lhs op rhs`.
    Compare(MarkerValue, MarkerOp, MarkerValue),
}

/// One side of a marker comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerValue {
    /// An environment variable such as `python_version` or `extra`.
    Var(String),
    /// A quoted string.
    Str(String),
}

/// A marker comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerOp {
    /// A version operator.
    Version(Op),
    /// `in` (substring).
    In,
    /// `not in`.
    NotIn,
}

impl Marker {
    /// Parses a marker; on error returns the column (0-based) and what was expected.
    pub fn parse(text: &str) -> Result<Marker, (usize, String)> {
        let mut p = MarkerParser { s: text, pos: 0 };
        let m = p.or()?;
        p.ws();
        if p.pos < text.len() {
            return Err((
                p.pos,
                format!(
                    "unexpected `{}`: expected `and`, `or` or the end of the marker",
                    &text[p.pos..]
                ),
            ));
        }
        Ok(m)
    }

    /// Evaluates the marker; `extras` are the extras requested of the
    /// package whose metadata holds the marker.
    pub fn evaluate(&self, env: &MarkerEnv, extras: &[String]) -> bool {
        match self {
            Marker::And(a, b) => a.evaluate(env, extras) && b.evaluate(env, extras),
            Marker::Or(a, b) => a.evaluate(env, extras) || b.evaluate(env, extras),
            Marker::Compare(l, op, r) => {
                let is_extra = |v: &MarkerValue| matches!(v, MarkerValue::Var(n) if n == "extra");
                if is_extra(l) || is_extra(r) {
                    let other = if is_extra(l) { r } else { l };
                    let MarkerValue::Str(want) = other else {
                        return false;
                    };
                    let want = normalize_name(want);
                    let hit = extras.iter().any(|e| normalize_name(e) == want);
                    return match op {
                        MarkerOp::Version(Op::Eq) | MarkerOp::Version(Op::Arbitrary) => hit,
                        MarkerOp::Version(Op::Ne) => !hit,
                        _ => false,
                    };
                }
                let value = |v: &MarkerValue| -> String {
                    match v {
                        MarkerValue::Str(s) => s.clone(),
                        MarkerValue::Var(n) => env.get(n).unwrap_or("").to_string(),
                    }
                };
                let (lv, rv) = (value(l), value(r));
                match op {
                    MarkerOp::In => rv.contains(&lv),
                    MarkerOp::NotIn => !rv.contains(&lv),
                    MarkerOp::Version(Op::Arbitrary) => lv == rv,
                    MarkerOp::Version(op) => match Version::parse(&lv) {
                        Some(v) if Version::parse(rv.trim_end_matches(".*")).is_some() => {
                            v.matches(*op, &rv)
                        }
                        _ => match op {
                            Op::Eq => lv == rv,
                            Op::Ne => lv != rv,
                            _ => false,
                        },
                    },
                }
            }
        }
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fn side(f: &mut fmt::Formatter, v: &MarkerValue) -> fmt::Result {
            match v {
                MarkerValue::Var(n) => f.write_str(n),
                MarkerValue::Str(s) => write!(f, "\"{s}\""),
            }
        }
        match self {
            Marker::And(a, b) => {
                let wrap = |m: &Marker| matches!(m, Marker::Or(..));
                for (i, m) in [a, b].into_iter().enumerate() {
                    if i == 1 {
                        f.write_str(" and ")?;
                    }
                    if wrap(m) {
                        write!(f, "({m})")?;
                    } else {
                        write!(f, "{m}")?;
                    }
                }
                Ok(())
            }
            Marker::Or(a, b) => write!(f, "{a} or {b}"),
            Marker::Compare(l, op, r) => {
                side(f, l)?;
                let op = match op {
                    MarkerOp::Version(o) => o.as_str(),
                    MarkerOp::In => "in",
                    MarkerOp::NotIn => "not in",
                };
                write!(f, " {op} ")?;
                side(f, r)
            }
        }
    }
}

struct MarkerParser<'a> {
    s: &'a str,
    pos: usize,
}

impl MarkerParser<'_> {
    fn ws(&mut self) {
        let r = &self.s[self.pos..];
        self.pos += r.len() - r.trim_start().len();
    }
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let r = self.rest();
        if r.starts_with(kw)
            && !r[kw.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Result<Marker, (usize, String)> {
        let mut m = self.and()?;
        while self.keyword("or") {
            let r = self.and()?;
            m = Marker::Or(Box::new(m), Box::new(r));
        }
        Ok(m)
    }
    fn and(&mut self) -> Result<Marker, (usize, String)> {
        let mut m = self.atom()?;
        while self.keyword("and") {
            let r = self.atom()?;
            m = Marker::And(Box::new(m), Box::new(r));
        }
        Ok(m)
    }
    fn atom(&mut self) -> Result<Marker, (usize, String)> {
        self.ws();
        if self.rest().starts_with('(') {
            self.pos += 1;
            let m = self.or()?;
            self.ws();
            if !self.rest().starts_with(')') {
                return Err((self.pos, "expected `)` to close the marker group".into()));
            }
            self.pos += 1;
            return Ok(m);
        }
        let l = self.value()?;
        self.ws();
        let op = if let Some((op, after)) = Op::split(self.rest()) {
            self.pos = self.s.len() - after.len();
            MarkerOp::Version(op)
        } else if self.keyword("in") {
            MarkerOp::In
        } else if self.keyword("not") {
            if !self.keyword("in") {
                return Err((self.pos, "expected `in` after `not`".into()));
            }
            MarkerOp::NotIn
        } else {
            return Err((
                self.pos,
                "expected a marker operator (==, !=, <, <=, >, >=, ~=, in, not in)".into(),
            ));
        };
        let r = self.value()?;
        if matches!(
            (&l, &r),
            (MarkerValue::Var(_), MarkerValue::Var(_)) | (MarkerValue::Str(_), MarkerValue::Str(_))
        ) {
            return Err((
                self.pos,
                "expected a marker variable compared with a quoted string".into(),
            ));
        }
        Ok(Marker::Compare(l, op, r))
    }
    fn value(&mut self) -> Result<MarkerValue, (usize, String)> {
        self.ws();
        let r = self.rest();
        if let Some(q) = r.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let Some(end) = r[1..].find(q) else {
                return Err((
                    self.pos,
                    format!("expected a closing {q} for the marker string"),
                ));
            };
            let v = r[1..1 + end].to_string();
            self.pos += end + 2;
            return Ok(MarkerValue::Str(v));
        }
        let end = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(r.len());
        let name = r[..end].to_string();
        if name == "extra" || MARKER_VARS.contains(&name.as_str()) {
            self.pos += end;
            return Ok(MarkerValue::Var(name));
        }
        if name.is_empty() {
            Err((
                self.pos,
                "expected a marker variable (such as python_version) or a quoted string".into(),
            ))
        } else {
            Err((self.pos, format!("expected a marker variable (such as python_version, sys_platform, extra), found `{name}`")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Requirement {
        Requirement::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn linux311() -> MarkerEnv {
        MarkerEnv {
            implementation_name: "cpython".into(),
            implementation_version: "3.11.2".into(),
            os_name: "posix".into(),
            platform_machine: "x86_64".into(),
            platform_python_implementation: "CPython".into(),
            platform_release: "6.18.0".into(),
            platform_system: "Linux".into(),
            platform_version: "#1 SMP".into(),
            python_full_version: "3.11.2".into(),
            python_version: "3.11".into(),
            sys_platform: "linux".into(),
        }
    }

    #[test]
    fn parses_the_design_examples() {
        let r = ok("numpy==1.26.4");
        assert_eq!(r.name.as_deref(), Some("numpy"));
        assert_eq!(r.source, Source::Index(vec![(Op::Eq, "1.26.4".into())]));
        let r = ok("torch>=2.0.0,<3.0");
        assert_eq!(r.canonical(Path::new("/")), "torch<3.0,>=2.0.0");
        assert_eq!(
            ok("opencv-python").canonical(Path::new("/")),
            "opencv-python"
        );
        let r = ok("git+https://github.com/org/repo.git@v1.0");
        assert_eq!(
            r.source,
            Source::Url("git+https://github.com/org/repo.git@v1.0".into())
        );
        assert_eq!(r.name, None);
    }

    #[test]
    fn parses_extras_urls_markers_paths() {
        let r = ok("Foo_Bar[Cuda, extra2] (>= 1.0 , != 1.5); python_version >= '3.9' and sys_platform == \"linux\"");
        assert_eq!(r.name.as_deref(), Some("foo-bar"));
        assert_eq!(r.extras, vec!["cuda", "extra2"]);
        assert_eq!(
            r.canonical(Path::new("/")),
            "foo-bar[cuda,extra2]!=1.5,>=1.0 ; python_version >= \"3.9\" and sys_platform == \"linux\""
        );
        let r = ok("pkg @ git+file:///tmp/repo@v1.0 ; python_version > \"3\"");
        assert_eq!(r.source, Source::Url("git+file:///tmp/repo@v1.0".into()));
        assert!(r.marker.is_some());
        let r = ok("./vendor/pkg");
        assert_eq!(r.canonical(Path::new("/packs/a")), "/packs/a/./vendor/pkg");
    }

    #[test]
    fn rejects_bad_strings_saying_what_was_expected() {
        let cases = [
            ("", "expected a package name"),
            ("numpy>=", "expected a version after `>=`"),
            ("numpy=1.0", "expected a valid version operator"),
            ("numpy==one", "PEP 440"),
            ("numpy 1.0", "expected a version operator (such as"),
            ("numpy>=1.0 2.0", "expected `,` between version specifiers"),
            ("-e ./pkg", "not a pip/uv option"),
            ("num$py", "unexpected `$`"),
            ("numpy[cuda", "expected `,` or `]`"),
            ("numpy; python_version <", "expected a marker variable"),
            ("numpy; python_versio == '3'", "found `python_versio`"),
            ("numpy; ", "expected an environment marker"),
            ("pkg @ ", "expected a URL after `@`"),
            ("pkg @ notaurl", "expected a URL"),
            ("git+github.com/x", "expected git+<scheme>://"),
            ("numpy>=1.0,", "expected a version operator"),
            ("numpy~=1", "two release numbers"),
            ("_numpy", "expected a package name"),
        ];
        for (s, want) in cases {
            let e = Requirement::parse(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e} (wanted {want:?})");
        }
    }

    #[test]
    fn evaluates_markers_from_metadata() {
        let env = linux311();
        let eval = |m: &str, extras: &[&str]| {
            let extras: Vec<String> = extras.iter().map(|s| s.to_string()).collect();
            Marker::parse(m).unwrap().evaluate(&env, &extras)
        };
        assert!(eval("platform_system == \"Linux\"", &[]));
        assert!(eval(
            "platform_system == \"Linux\" and python_version < \"3.15\"",
            &[]
        ));
        assert!(!eval("python_version >= \"3.12\"", &[]));
        assert!(!eval("extra == \"optree\"", &[]));
        assert!(eval("extra == \"CuBLAS\"", &["cublas"]));
        assert!(eval(
            "(os_name == 'nt' or sys_platform == 'linux') and platform_machine != 'aarch64'",
            &[]
        ));
        assert!(eval("'linux' in sys_platform", &[]));
        assert!(eval("python_full_version >= '3.8.1'", &[]));
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize_name("Typing_Extensions"), "typing-extensions");
        assert_eq!(normalize_name("a..b__c"), "a-b-c");
    }

    #[test]
    fn never_panics_on_garbage() {
        // A small deterministic generator over characters that matter to the grammar.
        let alphabet: Vec<char> = "ab1.-_ [](),;@<>=!~'\"é€:/+*ext andornotinpython_version"
            .chars()
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = Requirement::parse(&s);
            let _ = Marker::parse(&s);
            let _ = crate::pep440::Version::parse(&s);
        }
    }
}
