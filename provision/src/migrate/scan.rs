//! Source scans of the pack's `.py` files: where it imports torch.

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

/// `import torch` / `from torchvision import ...` sites in the pack's `.py`
/// files (hidden folders, `__pycache__`, `node_modules` and venvs skipped).
pub(super) fn scan_torch_imports(dir: &Path) -> Vec<Inferred<String>> {
    let mut found = Vec::new();
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
    for f in files {
        if found.len() >= MAX_EVIDENCE {
            break;
        }
        if std::fs::metadata(&f)
            .map(|m| m.len() > MAX_SCAN_BYTES)
            .unwrap_or(true)
        {
            continue;
        }
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if let Some(stmt) = torch_import(line) {
                let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
                found.push(Inferred::new(stmt, format!("{rel}:{}", i + 1)));
                break; // one site per file
            }
        }
    }
    found
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
