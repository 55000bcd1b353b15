//! Source scans of the pack's `.py` files: where it imports torch, and where
//! it writes into its own folder (paths made from `__file__`).

use std::path::{Path, PathBuf};

use super::Inferred;

/// Most directory entries looked at when scanning for `import torch`.
const MAX_SCAN_ENTRIES: usize = 20_000;
/// Larger `.py` files are not scanned.
const MAX_SCAN_BYTES: u64 = 2 << 20;
/// How many `import torch` sites are reported.
const MAX_EVIDENCE: usize = 3;
/// Top-level modules whose import means the pack needs torch.
const TORCH_MODULES: [&str; 3] = ["torch", "torchvision", "torchaudio"];

/// The pack's `.py` files (hidden folders, `__pycache__`, `node_modules`
/// and venvs skipped; files over [`MAX_SCAN_BYTES`] left out), top-level
/// files first.
fn py_files(dir: &Path) -> Vec<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    let mut files: Vec<PathBuf> = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            visited += 1;
            if visited > MAX_SCAN_ENTRIES {
                break;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                let skip = name.starts_with('.')
                    || matches!(
                        name.as_str(),
                        "__pycache__" | "node_modules" | "venv" | "site-packages"
                    );
                if !skip {
                    stack.push(e.path());
                }
            } else if ft.is_file() && name.ends_with(".py") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    // Top-level files first: `__init__.py`, `nodes.py`.
    files.sort_by_key(|f| {
        f.strip_prefix(dir)
            .map(|r| r.components().count())
            .unwrap_or(usize::MAX)
    });
    files.retain(|f| {
        std::fs::metadata(f)
            .map(|m| m.len() <= MAX_SCAN_BYTES)
            .unwrap_or(false)
    });
    files
}

fn read_lossy(f: &Path) -> Option<String> {
    let bytes = std::fs::read(f).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn rel(dir: &Path, f: &Path) -> String {
    f.strip_prefix(dir).unwrap_or(f).display().to_string()
}

/// `import torch` / `from torchvision import ...` sites in the pack's `.py`
/// files (one per file, at most [`MAX_EVIDENCE`]).
pub(super) fn scan_torch_imports(dir: &Path) -> Vec<Inferred<String>> {
    let mut found = Vec::new();
    for f in py_files(dir) {
        if found.len() >= MAX_EVIDENCE {
            break;
        }
        let Some(text) = read_lossy(&f) else { continue };
        for (i, line) in text.lines().enumerate() {
            if let Some(stmt) = torch_import(line) {
                found.push(Inferred::new(stmt, format!("{}:{}", rel(dir, &f), i + 1)));
                break; // one site per file
            }
        }
    }
    found
}

/// How many folder-write sites are reported.
const MAX_WRITES: usize = 5;
/// Calls that create or change files.
const WRITE_CALLS: [&str; 14] = [
    ".write_text(",
    ".write_bytes(",
    "os.makedirs(",
    "os.mkdir(",
    ".mkdir(",
    "shutil.copy",
    "shutil.move",
    "os.rename(",
    "os.replace(",
    "os.remove(",
    ".to_csv(",
    ".save(",
    "json.dump(",
    "urlretrieve(",
];

/// Sites where the pack writes into its own folder: a write (an `open` in a
/// write mode, `write_text`, `makedirs`, ...) on a path made from
/// `__file__`, directly or through names and functions derived from it.
/// A heuristic: it reads lines, not Python; at most [`MAX_WRITES`] sites.
pub(super) fn scan_folder_writes(dir: &Path) -> Vec<Inferred<String>> {
    let mut found = Vec::new();
    for f in py_files(dir) {
        if found.len() >= MAX_WRITES {
            break;
        }
        let Some(text) = read_lossy(&f) else { continue };
        if !text.contains("__file__") {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let tainted = tainted_names(&lines);
        for (i, line) in lines.iter().enumerate() {
            let code = line.split('#').next().unwrap_or("");
            if is_write(code) && tainted.iter().any(|n| has_word(code, n)) {
                found.push(Inferred::new(
                    code.trim().to_string(),
                    format!("{}:{}", rel(dir, &f), i + 1),
                ));
                break; // one site per file
            }
        }
    }
    found
}

/// `__file__` and the names derived from it: assigned from an expression
/// that mentions one, or functions whose body mentions `__file__`.
fn tainted_names(lines: &[&str]) -> Vec<String> {
    let mut tainted: Vec<String> = vec!["__file__".into()];
    let mut def: Option<(String, usize)> = None;
    for _ in 0..3 {
        for line in lines {
            let code = line.split('#').next().unwrap_or("");
            let indent = code.len() - code.trim_start().len();
            let t = code.trim();
            if let Some(rest) = t
                .strip_prefix("def ")
                .or_else(|| t.strip_prefix("async def "))
            {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                def = Some((name, indent));
                continue;
            }
            if let Some((name, d_indent)) = &def {
                if !t.is_empty() && indent <= *d_indent {
                    def = None;
                } else if has_word(t, "__file__") && !tainted.contains(name) {
                    tainted.push(name.clone());
                }
            }
            let Some((lhs, rhs)) = t.split_once('=') else {
                continue;
            };
            if rhs.starts_with('=') || lhs.ends_with(['!', '<', '>', '=']) {
                continue; // a comparison
            }
            if !tainted.iter().any(|n| has_word(rhs, n)) {
                continue;
            }
            let target = lhs.split(':').next().unwrap_or("").trim();
            let target = target.strip_prefix("self.").unwrap_or(target);
            if !target.is_empty()
                && target.chars().all(|c| c.is_alphanumeric() || c == '_')
                && !tainted.iter().any(|n| n == target)
            {
                tainted.push(target.to_string());
            }
        }
    }
    tainted
}

fn is_write(code: &str) -> bool {
    if WRITE_CALLS.iter().any(|w| code.contains(w)) {
        return true;
    }
    let Some(at) = code.find("open(") else {
        return false;
    };
    // A mode literal among the arguments: `'w'`, `"ab"`, `'r+'`, `mode="x"`.
    quoted(&code[at..]).iter().any(|s| {
        (1..=3).contains(&s.len())
            && s.chars().all(|c| "rwxabt+".contains(c))
            && s.chars().any(|c| "wxa+".contains(c))
    })
}

/// The contents of the quoted literals in `s` (no escapes).
fn quoted(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(['\'', '"']) {
        let q = rest.as_bytes()[i] as char;
        let after = &rest[i + 1..];
        let Some(j) = after.find(q) else { break };
        out.push(&after[..j]);
        rest = &after[j + 1..];
    }
    out
}

/// Whether `word` occurs in `text` as a whole identifier.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// `Some("import torch")` when the line imports torch, torchvision or torchaudio.
fn torch_import(line: &str) -> Option<String> {
    let l = line.trim();
    let root = |m: &str| m.split('.').next().unwrap_or("").trim().to_string();
    if let Some(rest) = l.strip_prefix("import ") {
        for item in rest.split(',') {
            let module = item.split_whitespace().next().unwrap_or("");
            if TORCH_MODULES.contains(&root(module).as_str()) {
                return Some(format!("import {module}"));
            }
        }
    } else if let Some(rest) = l.strip_prefix("from ") {
        let module = rest.split_whitespace().next().unwrap_or("");
        if TORCH_MODULES.contains(&root(module).as_str()) && rest.contains(" import") {
            return Some(format!("from {module} import ..."));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_imports() {
        assert_eq!(
            torch_import("import torch").as_deref(),
            Some("import torch")
        );
        assert_eq!(
            torch_import("  import numpy as np, torchvision").as_deref(),
            Some("import torchvision")
        );
        assert_eq!(
            torch_import("from torch import nn").as_deref(),
            Some("from torch import ...")
        );
        assert_eq!(
            torch_import("from torchaudio.functional import x").as_deref(),
            Some("from torchaudio.functional import ...")
        );
        assert_eq!(torch_import("import torchsde"), None);
        assert_eq!(torch_import("from .torch import x"), None);
        assert_eq!(torch_import("importtorch"), None);
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn writes_into_the_pack_folder_are_found() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(
            d.join("__init__.py"),
            "import os\nNODE_FILE = os.path.abspath(__file__)\nROOT = os.path.dirname(NODE_FILE)\nCONFIG = os.path.join(ROOT, 'cfg.json')\nif not os.path.exists(CONFIG):\n    with open(CONFIG, 'w') as f:\n        f.write('{}')\n",
        )
        .unwrap();
        std::fs::create_dir(d.join("py")).unwrap();
        std::fs::write(
            d.join("py/util.py"),
            "import os, json\ndef get_ext_dir(sub=None):\n    p = os.path.dirname(__file__)\n    return os.path.join(p, sub)\n\ndef save(settings):\n    with open(get_ext_dir('x.json'), \"w\") as f:\n        json.dump(settings, f)\n",
        )
        .unwrap();
        std::fs::write(
            d.join("reader.py"),
            "import os\nHERE = os.path.dirname(__file__)\nwith open(os.path.join(HERE, 'a.txt')) as f:\n    x = f.read()\nout = open('/tmp/x', 'w')\nif HERE == 'x':\n    pass\n",
        )
        .unwrap();
        let found = scan_folder_writes(d);
        let froms: Vec<&str> = found.iter().map(|f| f.from.as_str()).collect();
        assert_eq!(froms, ["__init__.py:6", "py/util.py:7"], "{found:?}");
        assert!(found[0].value.contains("open(CONFIG, 'w')"));
    }
}
