//! The `requirements.txt` lexer: decoding, pip's line joining, comments
//! and options.

/// Decodes file bytes; `true` when some bytes could not be decoded.
pub(super) fn decode(bytes: &[u8]) -> (String, bool) {
    if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return match String::from_utf8(rest.to_vec()) {
            Ok(s) => (s, false),
            Err(_) => (String::from_utf8_lossy(rest).into_owned(), true),
        };
    }
    let utf16 = |rest: &[u8], le: bool| -> (String, bool) {
        let units: Vec<u16> = rest
            .chunks(2)
            .map(|c| {
                let pair = [c[0], *c.get(1).unwrap_or(&0)];
                if le {
                    u16::from_le_bytes(pair)
                } else {
                    u16::from_be_bytes(pair)
                }
            })
            .collect();
        let lossy =
            rest.len() % 2 == 1 || char::decode_utf16(units.iter().copied()).any(|c| c.is_err());
        (String::from_utf16_lossy(&units), lossy)
    };
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        return utf16(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
        return utf16(rest, false);
    }
    match String::from_utf8(bytes.to_vec()) {
        Ok(s) => (s, false),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
    }
}

fn is_comment_line(l: &str) -> bool {
    l.trim_start().starts_with('#')
}

/// pip's line joining: a line ending in `\` continues on the next one
/// (comment lines end a continuation). Returns (first line number, text).
pub(super) fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut acc: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let n = i + 1;
        if !line.ends_with('\\') || is_comment_line(line) {
            // pip: a comment line gets a leading space, so that it is
            // still cut as a comment once joined.
            let line = if is_comment_line(line) {
                format!(" {line}")
            } else if acc.is_some() {
                line.trim_start().to_string()
            } else {
                line.to_string()
            };
            match acc.take() {
                Some((start, mut s)) => {
                    s.push_str(&line);
                    out.push((start, s));
                }
                None => out.push((n, line)),
            }
        } else {
            let part = line.trim_matches('\\');
            match &mut acc {
                Some((_, s)) => s.push_str(part.trim_start()),
                None => acc = Some((n, part.to_string())),
            }
        }
    }
    if let Some(a) = acc {
        out.push(a);
    }
    out
}

/// Cuts a `#` comment: at the start, or after whitespace (so URL fragments
/// such as `#egg=name` stay).
pub(super) fn strip_comment(line: &str) -> &str {
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_ws {
            return &line[..i];
        }
        prev_ws = c.is_whitespace();
    }
    line
}

/// `pkg==1.0 --hash=sha256:...` → (`pkg==1.0`, Some(`--hash=...`)).
pub(super) fn split_trailing_options(l: &str) -> (&str, Option<&str>) {
    let mut prev_ws = false;
    for (i, c) in l.char_indices() {
        if c == '-' && prev_ws {
            return (l[..i].trim_end(), Some(l[i..].trim()));
        }
        prev_ws = c.is_whitespace();
    }
    (l, None)
}

/// `--index-url=URL`, `--index-url URL`, `-rfile`, `-r file` → (name, value).
pub(super) fn split_option(l: &str) -> (&str, Option<&str>) {
    fn value(v: &str) -> Option<&str> {
        let v = v.trim();
        (!v.is_empty()).then_some(v)
    }
    let l = l.trim();
    if l.starts_with("--") {
        let end = l
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(l.len());
        let rest = &l[end..];
        let rest = rest.strip_prefix('=').unwrap_or(rest);
        return (&l[..end], value(rest));
    }
    let mut it = l.char_indices();
    it.next(); // '-'
    match it.next() {
        Some((i, c)) => {
            let end = i + c.len_utf8();
            (&l[..end], value(&l[end..]))
        }
        None => (l, None),
    }
}

/// pip options (besides the index ones) that take a value.
pub(super) const PIP_VALUE_OPTIONS: [&str; 24] = [
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--upgrade-strategy",
    "--trusted-host",
    "--src",
    "--progress-bar",
    "-C",
    "--config-settings",
    "--global-option",
    "--no-binary",
    "--only-binary",
    "--log",
    "--cache-dir",
    "--timeout",
    "--retries",
    "--proxy",
    "--cert",
    "--python",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_line_rules() {
        let lines = logical_lines("a \\\n  b\n# c \\\nd\\\n# x\ne\r\n");
        assert_eq!(
            lines,
            vec![
                (1, "a b".to_string()),
                (3, " # c \\".to_string()),
                (4, "d # x".to_string()),
                (6, "e".to_string())
            ]
        );
        assert_eq!(strip_comment("numpy  # pinned"), "numpy  ");
        assert_eq!(strip_comment("# all"), "");
        assert_eq!(
            strip_comment("git+https://h/x.git#egg=x"),
            "git+https://h/x.git#egg=x"
        );
        assert_eq!(split_option("-r more.txt"), ("-r", Some("more.txt")));
        assert_eq!(split_option("-rmore.txt"), ("-r", Some("more.txt")));
        assert_eq!(
            split_option("--index-url=https://x/simple"),
            ("--index-url", Some("https://x/simple"))
        );
        assert_eq!(
            split_option("--extra-index-url   https://x/simple "),
            ("--extra-index-url", Some("https://x/simple"))
        );
        assert_eq!(split_option("--pre"), ("--pre", None));
        assert_eq!(split_option("-"), ("-", None));
        assert_eq!(
            split_trailing_options("a==1 --hash=sha256:00 --hash=sha256:11"),
            ("a==1", Some("--hash=sha256:00 --hash=sha256:11"))
        );
        assert_eq!(
            split_trailing_options("a-b==1 ; python_version > \"3\""),
            ("a-b==1 ; python_version > \"3\"", None)
        );
    }
}
