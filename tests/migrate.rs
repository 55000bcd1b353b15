//! Integration tests of `nodecell migrate` (issue 6, "Migration"): the real
//! binary on sample packs made under a temp dir; every manifest it writes is
//! read back with the provision crate's own parser. No network, no uv.

use std::path::{Path, PathBuf};

use nodecell_provision::{Pack, Requirement};
use serde_json::Value;

use super::util::{run, Ran};

/// A pack folder `name` under a fresh temp dir, holding `files`.
fn pack(name: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("nodecell-migrate-")
        .tempdir()
        .expect("tempdir");
    let dir = t.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, text) in files {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    (t, dir)
}

fn migrate(dir: &Path, flags: &[&str]) -> Ran {
    let d = dir.to_str().unwrap();
    let mut args = vec!["migrate", d];
    args.extend_from_slice(flags);
    run(&args)
}

/// Runs `migrate --json`, expects success, returns the report.
#[track_caller]
fn migrate_json(dir: &Path, flags: &[&str]) -> Value {
    let mut f = vec!["--json"];
    f.extend_from_slice(flags);
    let r = migrate(dir, &f);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// Loads the written manifest with the provision crate; checks every
/// dependency with `Requirement::parse`.
#[track_caller]
fn load(dir: &Path) -> Pack {
    let p = Pack::load(dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.manifest_path,
        dir.canonicalize().unwrap().join("manifest.yaml")
    );
    for d in &p.manifest.dependencies {
        Requirement::parse(d.as_written()).unwrap_or_else(|e| panic!("{e}"));
    }
    p
}

fn written_deps(p: &Pack) -> Vec<&str> {
    p.manifest
        .dependencies
        .iter()
        .map(|d| d.as_written())
        .collect()
}

/// The findings of one list (`check`, `not_inferred`, `dropped`) of a JSON report.
fn findings<'a>(report: &'a Value, list: &str) -> Vec<&'a Value> {
    report[list].as_array().unwrap().iter().collect()
}

#[track_caller]
fn has_finding(report: &Value, list: &str, kind: &str, text_has: &str) -> Value {
    findings(report, list)
        .into_iter()
        .find(|f| f["kind"] == kind && f["text"].as_str().unwrap().contains(text_has))
        .unwrap_or_else(|| panic!("no {kind} finding about {text_has:?} in {list}: {report:#}"))
        .clone()
}

#[test]
fn migrate_requirements_txt_pack() {
    let (_t, dir) = pack(
        "ComfyUI-Simple",
        &[
            (
                "requirements.txt",
                "# image helpers\nnumpy>=1.24,<2\nopencv-python-headless>=4.8  # cv2\n-r requirements/extra.txt\n\
                 --extra-index-url https://wheels.example.org/simple\n\
                 git+https://github.com/org/repo.git@v1.0\nscikit-image ; python_version >= \"3.9\"\n",
            ),
            ("requirements/extra.txt", "pillow>=10\n"),
            ("__init__.py", "NODE_CLASS_MAPPINGS = {}\n"),
        ],
    );
    let r = migrate(&dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.contains("wrote "), "{}", r.stderr);
    assert!(
        r.stderr.contains("numpy>=1.24,<2  (requirements.txt:2)"),
        "{}",
        r.stderr
    );
    let p = load(&dir);
    let m = &p.manifest;
    assert_eq!(m.name, "ComfyUI-Simple");
    assert!(m.isolated && !m.share_torch);
    assert_eq!(
        written_deps(&p),
        vec![
            "numpy>=1.24,<2",
            "opencv-python-headless>=4.8",
            "pillow>=10",
            "git+https://github.com/org/repo.git@v1.0",
            "scikit-image ; python_version >= \"3.9\"",
        ]
    );
    assert_eq!(
        m.index.extra_index_urls,
        vec!["https://wheels.example.org/simple"]
    );
}

#[test]
fn migrate_pyproject_with_comfy_isolation() {
    let (_t, dir) = pack(
        "folder",
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"comfyui-isolated-thing\"\nversion = \"0.3.1\"\n\
                 dependencies = [\"numpy>=2\", \"torch>=2.1\", \"einops\"]\n\
                 [tool.comfy]\nPublisherId = \"someone\"\nDisplayName = \"Isolated Thing\"\n\
                 [tool.comfy.isolation]\ncan_isolate = true\nshare_torch = true\n\
                 extra_index_urls = [\"https://download.pytorch.org/whl/cu128\"]\n\
                 execution_model = \"sealed_worker\"\n",
            ),
            ("nodes.py", "import numpy\n"),
        ],
    );
    let report = migrate_json(&dir, &[]);
    assert_eq!(report["written"], true);
    assert_eq!(report["name"]["from"], "pyproject.toml: project.name");
    assert_eq!(
        report["share_torch"]["from"],
        "pyproject.toml: tool.comfy.isolation.share_torch"
    );
    has_finding(&report, "dropped", "shared_torch", "torch>=2.1");
    has_finding(&report, "check", "ignored", "execution_model");
    let p = load(&dir);
    let m = &p.manifest;
    assert_eq!(m.name, "comfyui-isolated-thing");
    assert_eq!(m.version.as_deref(), Some("0.3.1"));
    assert!(m.isolated && m.share_torch);
    assert_eq!(written_deps(&p), vec!["numpy>=2", "einops"]);
    assert_eq!(
        m.index.extra_index_urls,
        vec!["https://download.pytorch.org/whl/cu128"]
    );
}

#[test]
fn migrate_install_py_pack() {
    let (_t, dir) = pack(
        "ComfyUI-Installer",
        &[(
            "install.py",
            "import subprocess, sys\n\
             packages = ['insightface==0.7.3', 'onnxruntime']\n\
             for p in packages:\n    subprocess.check_call([sys.executable, '-m', 'pip', 'install', p])\n\
             subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-U', 'ultralytics>=8'])\n\
             if sys.platform == 'win32':\n    os.system('pip install pywin32')\n",
        )],
    );
    let report = migrate_json(&dir, &[]);
    for d in report["dependencies"].as_array().unwrap() {
        assert_eq!(d["note"], "found in install.py, please check", "{d}");
    }
    has_finding(&report, "check", "install_py", "insightface==0.7.3");
    has_finding(&report, "not_inferred", "install_py", "p");
    let p = load(&dir);
    assert_eq!(
        written_deps(&p),
        vec![
            "insightface==0.7.3",
            "onnxruntime",
            "ultralytics>=8",
            "pywin32"
        ]
    );
    let text = std::fs::read_to_string(dir.join("manifest.yaml")).unwrap();
    assert!(
        text.contains("install.py:2; found in install.py, please check"),
        "{text}"
    );
    // The human report says so too.
    std::fs::remove_file(dir.join("manifest.yaml")).unwrap();
    let r = migrate(&dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("found in install.py, please check"),
        "{}",
        r.stderr
    );
}

#[test]
fn migrate_torch_pack_shares_torch() {
    let (_t, dir) = pack(
        "torchy",
        &[
            (
                "requirements.txt",
                "torch==2.1.0\ntorchvision==0.16.0\nxformers>=0.0.20\nkornia>=0.7\n",
            ),
            ("nodes/__init__.py", "from .impl import *\n"),
            ("nodes/impl.py", "import torch.nn.functional as F\n"),
        ],
    );
    let report = migrate_json(&dir, &[]);
    assert_eq!(report["share_torch"]["value"], true);
    let evidence: Vec<&str> = report["torch_evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["from"].as_str().unwrap())
        .collect();
    assert!(evidence.contains(&"requirements.txt:1"), "{evidence:?}");
    assert!(evidence.contains(&"nodes/impl.py:1"), "{evidence:?}");
    has_finding(&report, "dropped", "shared_torch", "torch==2.1.0");
    has_finding(&report, "check", "torch_companion", "torchvision==0.16.0");
    let p = load(&dir);
    assert!(p.manifest.share_torch);
    assert_eq!(
        written_deps(&p),
        vec!["torchvision", "xformers>=0.0.20", "kornia>=0.7"]
    );

    // `import torch` alone is enough.
    let (_t, dir) = pack(
        "imports-only",
        &[
            ("requirements.txt", "numpy\n"),
            ("nodes.py", "import torch\n"),
        ],
    );
    assert_eq!(migrate(&dir, &[]).code, 0);
    let p = load(&dir);
    assert!(p.manifest.share_torch);
    assert_eq!(written_deps(&p), vec!["numpy"]);
}

#[test]
fn migrate_reports_broken_lines_and_leaves_them_out() {
    let (_t, dir) = pack(
        "broken",
        &[(
            "requirements.txt",
            "numpy>=\nrequests==2.31.0\n-e .\n./local/pkg\nnumpy==1.26.4\nscipy==1.11 --hash=sha256:00\nnumpy>=2\n",
        )],
    );
    let report = migrate_json(&dir, &[]);
    let bad = has_finding(&report, "not_inferred", "unparseable", "numpy>=");
    assert_eq!(bad["from"], "requirements.txt:1");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("expected a version after `>=`"),
        "{bad}"
    );
    has_finding(&report, "not_inferred", "editable", "-e .");
    has_finding(&report, "not_inferred", "local_path", "./local/pkg");
    has_finding(&report, "not_inferred", "unsupported_option", "--hash");
    let c = has_finding(&report, "not_inferred", "conflict", "numpy>=2");
    assert!(
        c["message"].as_str().unwrap().contains("numpy==1.26.4"),
        "{c}"
    );
    let p = load(&dir);
    assert_eq!(
        written_deps(&p),
        vec!["requests==2.31.0", "numpy==1.26.4", "scipy==1.11"]
    );
    // Left-out lines are listed in the file, as comments.
    let text = std::fs::read_to_string(dir.join("manifest.yaml")).unwrap();
    assert!(text.contains("#   numpy>=  (requirements.txt:1)"), "{text}");

    // The human report names them too.
    let r = migrate(&dir, &["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("could not infer"), "{}", r.stderr);
    assert!(
        r.stderr.contains("requirements.txt:1: numpy>=:"),
        "{}",
        r.stderr
    );
}

#[test]
fn migrate_refuses_to_overwrite_without_force() {
    let (_t, dir) = pack("mine", &[("requirements.txt", "numpy\n")]);
    let mine = "name: hand-written\ndependencies: [numpy==1.26.4]\n";
    std::fs::write(dir.join("manifest.yaml"), mine).unwrap();
    let r = migrate(&dir, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.yaml")).unwrap(),
        mine
    );
    let j = migrate(&dir, &["--json"]);
    assert_eq!(j.code, 1);
    let v: Value = serde_json::from_str(j.stdout.trim()).unwrap();
    assert_eq!(v["kind"], "exists");
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.yaml")).unwrap(),
        mine
    );
}

#[test]
fn migrate_force_overwrites() {
    let (_t, dir) = pack("forced", &[("requirements.txt", "numpy>=1.24\n")]);
    std::fs::write(dir.join("manifest.yaml"), "name: old\n").unwrap();
    let report = migrate_json(&dir, &["--force"]);
    assert_eq!(report["written"], true);
    assert_eq!(report["replaced"], true);
    let p = load(&dir);
    assert_eq!(p.manifest.name, "forced");
    assert_eq!(written_deps(&p), vec!["numpy>=1.24"]);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn migrate_dry_run_prints_and_writes_nothing() {
    let (_t, dir) = pack(
        "dry pack",
        &[
            ("requirements.txt", "numpy==1.26.4\n"),
            ("nodes.py", "from torch import nn\n"),
        ],
    );
    let r = migrate(&dir, &["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!dir.join("manifest.yaml").exists());
    assert!(r.stderr.contains("dry run"), "{}", r.stderr);
    // stdout is the manifest: the provision crate parses it as such.
    let path = dir.join("manifest.yaml");
    let m = nodecell_provision::manifest::parse_manifest(
        &path,
        &r.stdout,
        nodecell_provision::ManifestFormat::Manifest,
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", r.stdout));
    assert_eq!(m.name, "dry_pack");
    assert!(m.share_torch);
    assert_eq!(m.dependencies[0].as_written(), "numpy==1.26.4");

    // With an existing manifest, a dry run still works and changes nothing.
    std::fs::write(&path, "name: keep\n").unwrap();
    let report = migrate_json(&dir, &["--dry-run"]);
    assert_eq!(report["written"], false);
    assert!(report["manifest"]
        .as_str()
        .unwrap()
        .contains("numpy==1.26.4"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "name: keep\n");
}

#[test]
fn migrate_rejects_a_path_that_is_not_a_folder() {
    let (_t, dir) = pack("p", &[("requirements.txt", "numpy\n")]);
    let r = migrate(&dir.join("requirements.txt"), &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not a folder"), "{}", r.stderr);
    let r = migrate(&dir.join("missing"), &[]);
    assert_eq!(r.code, 1, "{r:?}");
}

/// `--app`: what the host app's requirements provide is written under
/// `shared:`; a pack inside `<app>/custom_nodes/` finds its app by itself.
#[test]
fn app_provided_requirements_are_shared() {
    let (t, dir) = pack(
        "pack",
        &[(
            "requirements.txt",
            "Pillow>=10.3.0\ncolor-matcher\ngit+https://example.org/x/y.git\n",
        )],
    );
    let app = t.path().join("App");
    std::fs::create_dir_all(app.join("custom_nodes")).unwrap();
    std::fs::write(app.join("folder_paths.py"), "").unwrap();
    std::fs::write(app.join("requirements.txt"), "torch\npillow\naiohttp\n").unwrap();
    let r = migrate_json(&dir, &["--dry-run", "--app", app.to_str().unwrap()]);
    let shared: Vec<&str> = r["shared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    assert_eq!(shared, ["Pillow>=10.3.0"], "{r}");
    let check = r["check"].as_array().unwrap();
    assert!(
        check
            .iter()
            .any(|f| f["kind"] == "vcs" && f["message"].as_str().unwrap().contains("example.org")),
        "{r}"
    );
    // Inside the app's custom_nodes, without --app.
    let inside = app.join("custom_nodes").join("pack");
    std::fs::rename(&dir, &inside).unwrap();
    let r = migrate(&inside, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = load(&inside);
    assert_eq!(p.manifest.shared.len(), 1);
    assert_eq!(
        p.manifest.sandbox.max_pids,
        Some(512),
        "default limits written"
    );
    assert!(r.stderr.contains("host app:"), "{r:?}");
}

/// `nodecell state list|rm|gc` on a state folder.
#[test]
fn state_list_remove_and_gc() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    for p in ["alpha", "beta"] {
        std::fs::create_dir_all(root.join("packs").join(p).join("layer")).unwrap();
        std::fs::write(root.join("packs").join(p).join("layer/x.json"), "{}").unwrap();
        std::fs::write(root.join("packs").join(p).join("synced.json"), "{}").unwrap();
    }
    let r = run(&["state", "list", "--json", "--root", root.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let packs: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(packs.len(), 2);
    assert_eq!(packs[0]["pack"], "alpha");
    let r = run(&["state", "rm", "alpha", "--root", root.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!root.join("packs/alpha").exists());
    let r = run(&["state", "rm", "../etc", "--root", root.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = run(&[
        "state",
        "gc",
        "--keep-days",
        "0",
        "--dry-run",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(
        r.stderr.contains("would remove beta") && root.join("packs/beta").exists(),
        "{r:?}"
    );
    let r = run(&[
        "state",
        "gc",
        "--keep-days",
        "0",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(
        r.stderr.contains("removed beta") && !root.join("packs/beta").exists(),
        "{r:?}"
    );
}
