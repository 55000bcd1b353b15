//! PEP 440 versions: enough to validate version specifiers in a manifest and to
//! compare versions in environment markers (`python_version < "3.15"`).
//!
//! uv does the real resolution; this module only has to reject what uv would
//! reject (with a message that names the manifest field) and order versions
//! correctly for markers.

use std::cmp::Ordering;

/// A parsed PEP 440 version (`1!2.0.1rc1.post2.dev3+local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    epoch: u64,
    release: Vec<u64>,
    pre: Option<(PreKind, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PreKind {
    Alpha,
    Beta,
    Rc,
}

/// Splits off a run of ASCII digits at the start of `s`.
fn digits(s: &str) -> (Option<u64>, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return (None, s);
    }
    // A number too large for u64 is treated as not a number (the caller reports it).
    (s[..end].parse().ok(), &s[end..])
}

fn strip_sep(s: &str) -> &str {
    s.strip_prefix(['.', '-', '_']).unwrap_or(s)
}

impl Version {
    /// Parses a version; `None` when `s` is not PEP 440.
    pub fn parse(s: &str) -> Option<Version> {
        let lower = s.trim().to_ascii_lowercase();
        let mut rest = lower.strip_prefix('v').unwrap_or(&lower);
        if rest.is_empty() {
            return None;
        }
        let (local, main) = match rest.split_once('+') {
            Some((m, l)) => {
                let ok = !l.is_empty()
                    && l.split(['.', '-', '_'])
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
                if !ok {
                    return None;
                }
                (Some(l.replace(['-', '_'], ".")), m)
            }
            None => (None, rest),
        };
        rest = main;
        let mut epoch = 0;
        if let Some((e, r)) = rest.split_once('!') {
            epoch = e.parse().ok()?;
            rest = r;
        }
        let mut release = Vec::new();
        loop {
            let (n, r) = digits(rest);
            release.push(n?);
            rest = r;
            match rest.strip_prefix('.') {
                Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => rest = r,
                _ => break,
            }
        }
        let mut pre = None;
        {
            let r = strip_sep(rest);
            let kinds = [
                ("alpha", PreKind::Alpha),
                ("a", PreKind::Alpha),
                ("beta", PreKind::Beta),
                ("b", PreKind::Beta),
                ("preview", PreKind::Rc),
                ("pre", PreKind::Rc),
                ("rc", PreKind::Rc),
                ("c", PreKind::Rc),
            ];
            if let Some((label, kind)) = kinds.iter().find(|(l, _)| r.starts_with(l)) {
                let r = strip_sep(&r[label.len()..]);
                let (n, r2) = digits(r);
                // "1.0a" means "1.0a0".
                pre = Some((*kind, n.unwrap_or(0)));
                rest = if n.is_none() { r } else { r2 };
            }
        }
        let mut post = None;
        if let Some(r) = rest.strip_prefix('-') {
            let (n, r2) = digits(r);
            if let Some(n) = n {
                post = Some(n);
                rest = r2;
            }
        }
        if post.is_none() {
            let r = strip_sep(rest);
            if let Some(label) = ["post", "rev", "r"].iter().find(|l| r.starts_with(*l)) {
                let r = strip_sep(&r[label.len()..]);
                let (n, r2) = digits(r);
                post = Some(n.unwrap_or(0));
                rest = if n.is_none() { r } else { r2 };
            }
        }
        let mut dev = None;
        {
            let r = strip_sep(rest);
            if let Some(r) = r.strip_prefix("dev") {
                let r = strip_sep(r);
                let (n, r2) = digits(r);
                dev = Some(n.unwrap_or(0));
                rest = if n.is_none() { r } else { r2 };
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Some(Version {
            epoch,
            release,
            pre,
            post,
            dev,
            local,
        })
    }

    /// The release segments (`[2, 0, 1]` for `2.0.1`).
    pub fn release(&self) -> &[u64] {
        &self.release
    }

    /// Whether the version has a local segment (`+cu132`).
    pub fn has_local(&self) -> bool {
        self.local.is_some()
    }

    fn release_cmp(a: &[u64], b: &[u64]) -> Ordering {
        let n = a.len().max(b.len());
        for i in 0..n {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            match x.cmp(&y) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        Ordering::Equal
    }

    /// Orders two versions, ignoring local segments (as PEP 440 does for
    /// specifiers without a local part).
    fn cmp_public(&self, other: &Version) -> Ordering {
        // Sort keys as in `packaging`: a dev release without pre/post sorts
        // before every pre-release of the same release.
        fn pre_key(v: &Version) -> (i8, u8, u64) {
            match (v.pre, v.post, v.dev) {
                (None, None, Some(_)) => (-1, 0, 0),
                (None, _, _) => (1, 0, 0),
                (Some((k, n)), _, _) => (0, k as u8, n),
            }
        }
        fn post_key(v: &Version) -> (i8, u64) {
            v.post.map_or((-1, 0), |n| (0, n))
        }
        fn dev_key(v: &Version) -> (i8, u64) {
            v.dev.map_or((1, 0), |n| (0, n))
        }
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| Self::release_cmp(&self.release, &other.release))
            .then_with(|| pre_key(self).cmp(&pre_key(other)))
            .then_with(|| post_key(self).cmp(&post_key(other)))
            .then_with(|| dev_key(self).cmp(&dev_key(other)))
    }

    /// Whether this version matches `op spec` (a PEP 440 comparison).
    /// `spec` may end in `.*` for `==` and `!=`.
    pub fn matches(&self, op: Op, spec: &str) -> bool {
        if op == Op::Arbitrary {
            return false; // handled by string comparison in callers
        }
        if let Some(prefix) = spec.strip_suffix(".*") {
            let Some(p) = Version::parse(prefix) else {
                return false;
            };
            let mut padded = self.release.clone();
            padded.resize(padded.len().max(p.release.len()), 0);
            let eq = self.epoch == p.epoch && padded[..p.release.len()] == p.release[..];
            return match op {
                Op::Eq => eq,
                Op::Ne => !eq,
                _ => false,
            };
        }
        let Some(s) = Version::parse(spec) else {
            return false;
        };
        let ord = self.cmp_public(&s);
        let local_eq = s.local.is_none() || s.local == self.local;
        match op {
            Op::Eq => ord == Ordering::Equal && local_eq,
            Op::Ne => !(ord == Ordering::Equal && local_eq),
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Compatible => {
                if s.release.len() < 2 {
                    return false;
                }
                let prefix = &s.release[..s.release.len() - 1];
                let mut padded = self.release.clone();
                padded.resize(padded.len().max(prefix.len()), 0);
                ord != Ordering::Less && padded[..prefix.len()] == prefix[..]
            }
            Op::Arbitrary => false,
        }
    }
}

/// A version comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `~=`
    Compatible,
    /// `===`
    Arbitrary,
}

impl Op {
    /// Reads an operator at the start of `s`; returns it and the rest.
    pub fn split(s: &str) -> Option<(Op, &str)> {
        // Longest first.
        const OPS: [(&str, Op); 8] = [
            ("===", Op::Arbitrary),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("~=", Op::Compatible),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        OPS.iter()
            .find_map(|(t, op)| s.strip_prefix(t).map(|r| (*op, r)))
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Compatible => "~=",
            Op::Arbitrary => "===",
        }
    }
}

/// Checks that `version` is allowed after `op` in a specifier; returns what
/// was expected when it is not.
pub fn check_specifier(op: Op, version: &str) -> Result<(), String> {
    if version.is_empty() {
        return Err(format!("expected a version after `{}`", op.as_str()));
    }
    if op == Op::Arbitrary {
        return if version
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c == ';')
        {
            Err("expected a version string without spaces after `===`".into())
        } else {
            Ok(())
        };
    }
    let (body, wildcard) = match version.strip_suffix(".*") {
        Some(b) => (b, true),
        None => (version, false),
    };
    if wildcard && !matches!(op, Op::Eq | Op::Ne) {
        return Err(format!(
            "expected a version without `.*` after `{}` (wildcards are only allowed after `==` and `!=`)",
            op.as_str()
        ));
    }
    let Some(v) = Version::parse(body) else {
        return Err(format!(
            "expected a PEP 440 version after `{}` (such as 1.26.4, 2.0rc1, 1.0.post1), found `{version}`",
            op.as_str()
        ));
    };
    if wildcard && v.has_local() {
        return Err("expected no local version (`+...`) together with `.*`".into());
    }
    if op == Op::Compatible && v.release().len() < 2 {
        return Err(format!(
            "expected at least two release numbers after `~=` (such as ~={}.0)",
            v.release()[0]
        ));
    }
    if v.has_local() && !matches!(op, Op::Eq | Op::Ne) {
        return Err(format!(
            "expected no local version (`+...`) after `{}` (local versions are only allowed after `==` and `!=`)",
            op.as_str()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn parses_and_rejects() {
        for ok in [
            "1",
            "1.26.4",
            "2.0rc1",
            "1.0.post1",
            "1.0.dev3",
            "1!2.0",
            "2.15.0+cu132",
            "1.0a",
            "1.0-1",
            "v3.11",
        ] {
            assert!(Version::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "x", "1..2", "1.0+", "1.0 2", "1.0-", "abc1", "1.0+a..b"] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn orders_like_pep440() {
        let order = [
            "1.0.dev0",
            "1.0a1",
            "1.0b2",
            "1.0rc1",
            "1.0",
            "1.0.post1",
            "1.1",
            "2.0",
            "1!0.1",
        ];
        for w in order.windows(2) {
            assert_eq!(
                v(w[0]).cmp_public(&v(w[1])),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
        }
        assert_eq!(v("1.0").cmp_public(&v("1.0.0")), Ordering::Equal);
    }

    #[test]
    fn specifiers_match() {
        assert!(v("3.11").matches(Op::Lt, "3.15"));
        assert!(!v("3.11").matches(Op::Ge, "3.12"));
        assert!(v("3.11.2").matches(Op::Eq, "3.11.*"));
        assert!(v("2.15.0+cu132").matches(Op::Eq, "2.15.0"));
        assert!(!v("2.15.0").matches(Op::Eq, "2.15.0+cpu"));
        assert!(v("3.9.1").matches(Op::Compatible, "3.9"));
        assert!(!v("4.0").matches(Op::Compatible, "3.9"));
    }

    #[test]
    fn specifier_checks_say_what_was_expected() {
        assert!(check_specifier(Op::Ge, "")
            .unwrap_err()
            .contains("expected a version"));
        assert!(check_specifier(Op::Ge, "1.*")
            .unwrap_err()
            .contains("wildcards"));
        assert!(check_specifier(Op::Compatible, "1")
            .unwrap_err()
            .contains("two release numbers"));
        assert!(check_specifier(Op::Eq, "one")
            .unwrap_err()
            .contains("PEP 440"));
        assert!(check_specifier(Op::Eq, "1.26.*").is_ok());
        assert!(check_specifier(Op::Arbitrary, "foo").is_ok());
    }
}
