//! The host app a pack is written for: its own requirements (what every
//! pack venv shares from the host instead of installing).

use std::path::Path;

use super::collect::Collector;

/// The distribution names an app's requirements file asks for, as pip reads
/// it (comments, continuations, `-r` includes; options, local paths and lines
/// that are not requirements are skipped). Names are normalized, in file
/// order, without duplicates; a file that cannot be read gives none.
pub fn requirement_names(file: &Path) -> Vec<String> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let mut c = Collector::new(dir);
    c.read_requirements(file, 0, None);
    let mut out: Vec<String> = Vec::new();
    for d in c.deps {
        if let Some(n) = d.req.name {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_an_app_requirements_file() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("requirements.txt"),
            "comfyui-frontend-package==1.35.9\ntorch\nnumpy>=1.25.0\n# comment\nPillow\naiohttp>=3.11.8 ; python_version >= \"3.9\"\n-r more.txt\n--extra-index-url https://x/simple\n./local\n\n#non essential:\nkornia>=0.7.1\n",
        )
        .unwrap();
        std::fs::write(t.path().join("more.txt"), "safetensors>=0.4.2\nNumPy\n").unwrap();
        assert_eq!(
            requirement_names(&t.path().join("requirements.txt")),
            [
                "comfyui-frontend-package",
                "torch",
                "numpy",
                "pillow",
                "aiohttp",
                "safetensors",
                "kornia"
            ]
        );
        assert!(requirement_names(&t.path().join("missing.txt")).is_empty());
    }
}
