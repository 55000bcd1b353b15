//! The `install.py` reader: a small Python tokenizer and the scanner that
//! finds `pip install` commands and lists of package names in it (the file
//! is never run).

use std::fmt::Write as _;

use super::collect::{classify, Class};

/// One argument of a pip command found in install.py.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Arg {
    /// A string literal.
    Literal(String),
    /// A variable, call, f-string placeholder...
    Computed(String),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hint {
    /// The arguments after `pip install`.
    Args(Vec<Arg>),
    /// An entry of a list of package names.
    Package(String),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct FoundHint {
    pub(super) line: usize,
    pub(super) what: Hint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Str { value: String, fstring: bool },
    Ident(String),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Reads a Python string body starting at the opening quote `cs[i]`;
/// returns (value, index after it, line after it).
fn read_py_string(cs: &[char], i: usize, mut line: usize, raw: bool) -> (String, usize, usize) {
    let q = cs[i];
    let triple = cs.get(i + 1) == Some(&q) && cs.get(i + 2) == Some(&q);
    let mut j = if triple { i + 3 } else { i + 1 };
    let mut v = String::new();
    while j < cs.len() {
        let c = cs[j];
        if triple {
            if c == q && cs.get(j + 1) == Some(&q) && cs.get(j + 2) == Some(&q) {
                return (v, j + 3, line);
            }
        } else if c == q {
            return (v, j + 1, line);
        } else if c == '\n' {
            return (v, j, line); // unterminated: stop at the line's end
        }
        if c == '\\' && j + 1 < cs.len() {
            let n = cs[j + 1];
            if n == '\n' {
                line += 1;
            }
            if raw {
                v.push('\\');
                v.push(n);
            } else {
                match n {
                    'n' => v.push('\n'),
                    't' => v.push('\t'),
                    '\n' => {}
                    '\\' | '\'' | '"' => v.push(n),
                    _ => {
                        v.push('\\');
                        v.push(n);
                    }
                }
            }
            j += 2;
            continue;
        }
        if c == '\n' {
            line += 1;
        }
        v.push(c);
        j += 1;
    }
    (v, j, line)
}

/// A small Python lexer: strings (all prefixes, triple quotes, adjacent
/// literals joined), names and punctuation; comments dropped.
fn tokenize(src: &str) -> Vec<Token> {
    let cs: Vec<char> = src.chars().collect();
    let mut out: Vec<Token> = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    // Bracket depth: a newline outside brackets ends a statement.
    let mut depth = 0usize;
    // Whether the next string literal continues the previous one
    // (`"a" "b"` on one logical line is one string).
    let mut join = false;
    while i < cs.len() {
        let c = cs[i];
        if c == '\n' {
            line += 1;
            i += 1;
            if depth == 0 {
                join = false;
            }
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '\\' && cs.get(i + 1) == Some(&'\n') {
            i += 2;
            line += 1;
            continue;
        }
        let mut string = None;
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < cs.len()
                && (cs[i].is_alphanumeric()
                    || cs[i] == '_'
                    || (cs[start].is_ascii_digit() && cs[i] == '.'))
            {
                i += 1;
            }
            let word: String = cs[start..i].iter().collect();
            let lw = word.to_ascii_lowercase();
            let prefix = matches!(
                lw.as_str(),
                "r" | "u" | "b" | "f" | "rb" | "br" | "fr" | "rf"
            );
            if prefix && i < cs.len() && (cs[i] == '"' || cs[i] == '\'') {
                string = Some((lw.contains('r'), lw.contains('f')));
            } else {
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
                join = false;
                continue;
            }
        } else if c == '"' || c == '\'' {
            string = Some((false, false));
        }
        let Some((raw, fstring)) = string else {
            match c {
                '[' | '(' | '{' => depth += 1,
                ']' | ')' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            join = false;
            i += 1;
            continue;
        };
        let (value, ni, nl) = read_py_string(&cs, i, line, raw);
        match out.last_mut() {
            Some(Token {
                tok:
                    Tok::Str {
                        value: v,
                        fstring: f,
                    },
                ..
            }) if join => {
                v.push_str(&value);
                *f |= fstring;
            }
            _ => out.push(Token {
                tok: Tok::Str { value, fstring },
                line,
            }),
        }
        join = true;
        i = ni;
        line = nl;
    }
    out
}

/// Parts of a variable name that mark a list of package names.
const PACKAGE_LIST_NAMES: [&str; 10] = [
    "packages",
    "package",
    "pkgs",
    "pkg",
    "requirements",
    "reqs",
    "req",
    "deps",
    "dependencies",
    "install",
];

fn names_packages(ident: &str) -> bool {
    ident
        .to_ascii_lowercase()
        .split('_')
        .any(|p| PACKAGE_LIST_NAMES.contains(&p))
}

fn is_pip_word(w: &str) -> bool {
    let base = w.rsplit('/').next().unwrap_or(w);
    matches!(base, "pip" | "pip3") || base.starts_with("pip3.")
}

/// A group element as an argument.
fn element_arg(toks: &[Token]) -> Option<Arg> {
    match toks {
        [] => None,
        [Token {
            tok: Tok::Str { value, fstring },
            ..
        }] if !(*fstring && value.contains('{')) => Some(Arg::Literal(value.clone())),
        _ => {
            let mut t = String::new();
            for tok in toks {
                match &tok.tok {
                    Tok::Str { value, .. } => {
                        let _ = write!(t, "{value:?}");
                    }
                    Tok::Ident(s) => {
                        if t.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                            t.push(' ');
                        }
                        t.push_str(s);
                    }
                    Tok::Punct(c) => t.push(*c),
                }
            }
            if t.chars().count() > 60 {
                t = t.chars().take(57).collect::<String>() + "...";
            }
            Some(Arg::Computed(t))
        }
    }
}

/// Splits shell words (quotes group, no expansion); stops at `&&`, `;`, `|`, `>`.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut has = false;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                has = true;
            }
            None if c.is_whitespace() => {
                if has || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            None if matches!(c, ';' | '|' | '&' | '>' | '<') && cur.is_empty() && !has => break,
            None if matches!(c, ';' | '|' | '&') => {
                words.push(std::mem::take(&mut cur));
                return words;
            }
            None => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Finds pip installs and package lists in install.py's source.
pub(super) fn scan_install_py(src: &str) -> Vec<FoundHint> {
    let toks = tokenize(src);
    let mut hints = Vec::new();
    let mentions_pip = src.contains("pip");

    // 1. Strings that hold a pip command line.
    for (k, t) in toks.iter().enumerate() {
        let Tok::Str { value, fstring } = &t.tok else {
            continue;
        };
        let words = shell_words(value);
        let Some(at) = words
            .windows(2)
            .position(|w| is_pip_word(&w[0]) && w[1] == "install")
        else {
            continue;
        };
        let mut args: Vec<Arg> = words[at + 2..]
            .iter()
            .map(|w| {
                let computed = (*fstring && w.contains('{'))
                    || w.contains("{}")
                    || w.contains("%s")
                    || w.contains("%(");
                if computed {
                    Arg::Computed(w.clone())
                } else {
                    Arg::Literal(w.clone())
                }
            })
            .collect();
        let continued = matches!(toks.get(k + 1).map(|t| &t.tok), Some(Tok::Punct('+' | '%')))
            || matches!(
                (toks.get(k + 1).map(|t| &t.tok), toks.get(k + 2).map(|t| &t.tok)),
                (Some(Tok::Punct('.')), Some(Tok::Ident(f))) if f == "format"
            );
        if continued && !args.iter().any(|a| matches!(a, Arg::Computed(_))) {
            args.push(Arg::Computed("(+ a computed part)".into()));
        }
        hints.push(FoundHint {
            line: t.line,
            what: Hint::Args(args),
        });
    }

    // 2. Bracketed groups: pip argument lists and lists of package names.
    let mut stack: Vec<usize> = Vec::new();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Punct('[' | '(' | '{') => stack.push(k),
            Tok::Punct(']' | ')' | '}') => {
                if let Some(open) = stack.pop() {
                    groups.push((open, k));
                }
            }
            _ => {}
        }
    }
    groups.sort_unstable();
    for (open, close) in groups {
        let Tok::Punct(kind) = toks[open].tok else {
            continue;
        };
        if kind == '{' {
            continue;
        }
        let mut elems: Vec<Vec<Token>> = vec![Vec::new()];
        let mut depth = 0i32;
        for t in &toks[open + 1..close] {
            match t.tok {
                Tok::Punct('[' | '(' | '{') => depth += 1,
                Tok::Punct(']' | ')' | '}') => depth -= 1,
                Tok::Punct(',') if depth == 0 => {
                    elems.push(Vec::new());
                    continue;
                }
                _ => {}
            }
            if let Some(last) = elems.last_mut() {
                last.push(t.clone());
            }
        }
        let args: Vec<Arg> = elems.iter().filter_map(|e| element_arg(e)).collect();
        let line = toks[open].line;
        let install_at = args
            .iter()
            .position(|a| matches!(a, Arg::Literal(s) if s == "install"));
        if let Some(at) = install_at {
            let pip_before = args[..at]
                .iter()
                .any(|a| matches!(a, Arg::Literal(s) if is_pip_word(s)));
            // `pip.main(["install", ...])`, `run_pip(["install", ...])`.
            let pip_call = at == 0
                && toks[open.saturating_sub(4)..open].iter().any(
                    |t| matches!(&t.tok, Tok::Ident(s) if s.to_ascii_lowercase().contains("pip")),
                );
            if pip_before || pip_call {
                hints.push(FoundHint {
                    line,
                    what: Hint::Args(args[at + 1..].to_vec()),
                });
                continue;
            }
        }
        // `packages = [...]`, `for pkg in [...]`.
        if !mentions_pip || args.is_empty() {
            continue;
        }
        let named = match (
            open.checked_sub(2).map(|k| &toks[k].tok),
            open.checked_sub(1).map(|k| &toks[k].tok),
        ) {
            (Some(Tok::Ident(name)), Some(Tok::Punct('='))) => names_packages(name),
            (Some(Tok::Ident(var)), Some(Tok::Ident(kw))) if kw == "in" => {
                open >= 3
                    && matches!(&toks[open - 3].tok, Tok::Ident(f) if f == "for")
                    && names_packages(var)
            }
            _ => false,
        };
        if !named {
            continue;
        }
        let all_packages = args.iter().all(|a| match a {
            Arg::Literal(s) => {
                !s.starts_with('-') && matches!(classify(s), Class::Dep(r) if r.name.is_some())
            }
            Arg::Computed(_) => false,
        });
        if all_packages {
            for a in args {
                if let Arg::Literal(s) = a {
                    hints.push(FoundHint {
                        line,
                        what: Hint::Package(s),
                    });
                }
            }
        }
    }
    hints.sort_by_key(|h| h.line);
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_lexer() {
        let toks = tokenize("x = r'a\\b' \"c\" f'{y}'  # 'no'\n'''m\nl''' + b\"z\"");
        let strs: Vec<(String, bool, usize)> = toks
            .iter()
            .filter_map(|t| match &t.tok {
                Tok::Str { value, fstring } => Some((value.clone(), *fstring, t.line)),
                _ => None,
            })
            .collect();
        assert_eq!(
            strs,
            vec![
                ("a\\bc{y}".into(), true, 1),
                ("m\nl".into(), false, 2),
                ("z".into(), false, 3)
            ]
        );
        assert_eq!(shell_words("a 'b c' \"d\" e;f"), vec!["a", "b c", "d", "e"]);
        assert_eq!(shell_words("x && y"), vec!["x"]);
    }
}
