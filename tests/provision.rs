//! Integration tests of `nodecell provision`, `venv`, `run --pack` (issue 4).
//!
//! Real uv, real PyPI packages (through the shared uv cache,
//! `$HOME/.cache/nodecell-dev/uv`), the repository's `.venv` (made by
//! scripts/setup.sh with Debian's python3.11, holding numpy 2.x and torch) as
//! the host. Venvs go to world-readable temporary roots under /tmp, since
//! sandboxed workers never run as uid 0.
//!
//! The `run_pack_*` tests need `nodecell run --pack` (wired by the lead on
//! top of the sandbox's `run`); they fail until it exists.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn host_python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

fn host_site_packages() -> String {
    let out = Command::new(host_python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn uv_cache() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache/nodecell-dev/uv")
}

/// A temporary folder under /tmp that every uid can read.
fn shared_tempdir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn write_pack(parent: &Path, dir: &str, manifest: &str) -> PathBuf {
    let d = parent.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("manifest.yaml"), manifest).unwrap();
    d
}

/// `nodecell ARGS` with the venv root, the host python and uv's cache set.
fn nodecell(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nodecell"));
    c.env("NODECELL_VENV_ROOT", root)
        .env("NODECELL_HOST_PYTHON", host_python())
        .env("UV_CACHE_DIR", uv_cache())
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null());
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn venv_dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Parses `NAME\tPATH\tSTATUS` lines.
fn provision_lines(stdout: &str) -> Vec<(String, PathBuf, String)> {
    stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "unexpected output line {l:?}");
            (f[0].to_string(), PathBuf::from(f[1]), f[2].to_string())
        })
        .collect()
}

#[test]
fn provision_prints_each_venv_and_whether_it_was_a_cache_hit() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let a = write_pack(
        packs.path(),
        "a",
        "name: pack_a\ndependencies:\n  - numpy==1.26.4\n",
    );
    let b = write_pack(
        packs.path(),
        "b",
        "name: pack_b\ndependencies:\n  - numpy>=2,<3\n",
    );
    let out = nodecell(root.path())
        .arg("provision")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let first = provision_lines(&stdout);
    assert_eq!(first.len(), 2, "{stdout}");
    assert_eq!(
        (first[0].0.as_str(), first[0].2.as_str()),
        ("pack_a", "built")
    );
    assert_eq!(
        (first[1].0.as_str(), first[1].2.as_str()),
        ("pack_b", "built")
    );
    assert!(first[0].1.join("bin/python").exists());
    assert_ne!(first[0].1, first[1].1);

    let out = nodecell(root.path())
        .arg("provision")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let second = provision_lines(&stdout);
    assert_eq!(
        second[0],
        (
            first[0].0.clone(),
            first[0].1.clone(),
            "cache-hit".to_string()
        )
    );
    assert_eq!(
        second[1],
        (
            first[1].0.clone(),
            first[1].1.clone(),
            "cache-hit".to_string()
        )
    );

    // Each venv imports its own numpy (directly; `run --pack` is tested below).
    for ((_, venv, _), want) in first.iter().zip(["1.26.4", "2."]) {
        let o = Command::new(venv.join("bin/python"))
            .args(["-c", "import numpy; print(numpy.__version__)"])
            .output()
            .unwrap();
        let v = String::from_utf8_lossy(&o.stdout);
        assert!(v.starts_with(want), "{}: numpy {v}", venv.display());
    }
}

#[test]
fn provision_json_streams_progress_events() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let a = write_pack(
        packs.path(),
        "a",
        "name: jsonpack\ndependencies:\n  - numpy==1.26.4\n  - packaging\n",
    );
    let out = nodecell(root.path())
        .args(["provision", "--json"])
        .arg(&a)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in ["resolving", "downloading", "installing", "done"] {
        assert!(names.contains(&want), "no {want} in {names:?}");
    }
    assert!(events
        .iter()
        .all(|e| e["pack"] == "jsonpack" && e["elapsed_ms"].is_u64()));
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["cache_hit"], false);
    assert_eq!(done["packages"], 2);
    assert!(Path::new(done["venv"].as_str().unwrap())
        .join("bin/python")
        .exists());
    let resolving = events.iter().find(|e| e["event"] == "resolving").unwrap();
    assert_eq!(resolving["requirements"], 2);
}

#[test]
fn concurrent_provision_from_two_processes_builds_one_venv() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let a = write_pack(
        packs.path(),
        "a",
        "name: racer\ndependencies:\n  - numpy==1.26.4\n  - packaging\n  - idna\n",
    );
    let spawn = || {
        nodecell(root.path())
            .arg("provision")
            .arg(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    assert!(o1.status.success(), "{}", text(&o1).1);
    assert!(o2.status.success(), "{}", text(&o2).1);
    let (l1, l2) = (provision_lines(&text(&o1).0), provision_lines(&text(&o2).0));
    assert_eq!(l1[0].1, l2[0].1, "both got the same venv");
    let mut statuses = vec![l1[0].2.clone(), l2[0].2.clone()];
    statuses.sort();
    assert_eq!(statuses, vec!["built", "cache-hit"], "exactly one build");
    assert_eq!(venv_dirs(root.path()).len(), 1);
    assert_eq!(
        std::fs::read_dir(root.path().join(".tmp")).unwrap().count(),
        0,
        "no leftover build folders"
    );
}

#[test]
fn bad_manifests_and_broken_requirements_fail_clearly_and_leave_nothing() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let cases = [
        (
            "name: x\nsandbox:\n  max_memory: lots\n",
            "manifest.yaml:3:",
            "sandbox.max_memory",
            "expected a size",
        ),
        (
            "name: x\ndependencies:\n  - numpy==1.26.4\n  - numpy=>2\n",
            "manifest.yaml:4:",
            "dependencies[1]",
            "expected a valid version operator",
        ),
        (
            "name: x\nshare_torhc: true\n",
            "manifest.yaml:2:",
            "share_torhc",
            "expected one of",
        ),
        (
            "name: x\nisolated: 3\n",
            "manifest.yaml:2:",
            "isolated",
            "expected a boolean",
        ),
    ];
    for (i, (manifest, at, field, expected)) in cases.iter().enumerate() {
        let dir = write_pack(packs.path(), &format!("bad{i}"), manifest);
        let out = nodecell(root.path())
            .arg("provision")
            .arg(&dir)
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for want in [at, field, expected] {
            assert!(
                stderr.contains(want),
                "{manifest:?}: {stderr} (wanted {want:?})"
            );
        }
    }
    let missing = packs.path().join("nomanifest");
    std::fs::create_dir_all(&missing).unwrap();
    let out = nodecell(root.path())
        .arg("provision")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("manifest.yaml"), "{}", text(&out).1);

    let broken = write_pack(
        packs.path(),
        "broken",
        "name: broken\ndependencies:\n  - nodecell-test-no-such-distribution-xyz\n",
    );
    let out = nodecell(root.path())
        .arg("provision")
        .arg(&broken)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nodecell-test-no-such-distribution-xyz"),
        "uv's own error text: {stderr}"
    );
    assert!(
        stderr.contains("uv") && stderr.contains("pip install"),
        "{stderr}"
    );
    assert!(
        venv_dirs(root.path()).is_empty(),
        "{:?}",
        venv_dirs(root.path())
    );

    let out = nodecell(root.path())
        .args(["venv", "list", "--root"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(text(&out).0.contains("no venvs"), "{}", text(&out).0);
}

#[test]
fn venv_list_and_gc() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let a = write_pack(
        packs.path(),
        "a",
        "name: listed\ndependencies:\n  - packaging\n",
    );
    let out = nodecell(root.path())
        .arg("provision")
        .arg(&a)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let key = venv_dirs(root.path()).pop().unwrap();

    let out = nodecell(root.path())
        .args(["venv", "list"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("KEY"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("{key} not listed: {stdout}"));
    assert!(
        row.contains("listed") && row.contains("UTC") && row.contains("iB"),
        "{row}"
    );

    let out = nodecell(root.path())
        .args(["venv", "list", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(text(&out).0.trim()).unwrap();
    assert_eq!(v["key"], key.as_str());
    assert_eq!(v["packs"][0], "listed");
    assert!(v["size_bytes"].as_u64().unwrap() > 0);

    // Recently used: kept.
    let out = nodecell(root.path()).args(["venv", "gc"]).output().unwrap();
    assert!(
        text(&out).0.contains("removed 0 venv(s)"),
        "{}",
        text(&out).0
    );
    assert_eq!(venv_dirs(root.path()), vec![key.clone()]);
    // Dry run says what it would do and does nothing.
    let out = nodecell(root.path())
        .args(["venv", "gc", "--keep-days", "0", "--dry-run"])
        .output()
        .unwrap();
    assert!(
        text(&out).0.contains(&format!("would remove {key}")),
        "{}",
        text(&out).0
    );
    assert_eq!(venv_dirs(root.path()), vec![key.clone()]);
    // Older than 0 days: removed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = nodecell(root.path())
        .args(["venv", "gc", "--keep-days", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        text(&out).0.contains(&format!("removed {key}")),
        "{}",
        text(&out).0
    );
    assert!(venv_dirs(root.path()).is_empty());
}

// ---- run --pack (needs the lead's wiring of `--pack` into `nodecell run`) ----

fn run_pack(root: &Path, pack: &Path, cmd: &[&str]) -> Output {
    nodecell(root)
        .arg("run")
        .arg("--pack")
        .arg(pack)
        .arg("--")
        .args(cmd)
        // What a careless launcher would leak into the worker: the host's packages first.
        .env("PYTHONPATH", host_site_packages())
        .output()
        .unwrap()
}

#[test]
fn run_pack_each_pack_imports_its_own_numpy_not_the_hosts() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let old = write_pack(
        packs.path(),
        "old",
        "name: old_numpy\ndependencies:\n  - numpy==1.26.4\n",
    );
    let new = write_pack(
        packs.path(),
        "new",
        "name: new_numpy\ndependencies:\n  - numpy>=2,<3\n",
    );
    let code = "import numpy, sys; print(numpy.__version__, sys.prefix)";
    let o = run_pack(root.path(), &old, &["python", "-c", code]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "run --pack old: {stderr}");
    assert!(stdout.starts_with("1.26.4 "), "{stdout}");
    assert!(
        stdout.contains(&root.path().display().to_string()),
        "not the pack's venv: {stdout}"
    );
    let o = run_pack(root.path(), &new, &["python", "-c", code]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "run --pack new: {stderr}");
    assert!(stdout.starts_with("2."), "{stdout}");
    assert_eq!(venv_dirs(root.path()).len(), 2);
}

#[test]
fn run_pack_with_share_torch_imports_the_hosts_torch() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let t = write_pack(
        packs.path(),
        "t",
        "name: torchy\nshare_torch: true\ndependencies:\n  - lion-pytorch==0.2.5\n",
    );
    let code = "import torch, lion_pytorch, importlib.metadata as m; print(m.version('torch'), float(torch.ones(3).sum()))\n\
                try:\n    import numpy; print('numpy leaked')\nexcept ModuleNotFoundError:\n    print('no numpy')";
    let o = run_pack(root.path(), &t, &["python", "-c", code]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "run --pack torchy: {stderr}");
    let host = Command::new(host_python())
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('torch'))",
        ])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    assert!(stdout.starts_with(&format!("{host} 3.0")), "{stdout}");
    assert!(stdout.contains("no numpy"), "{stdout}");
}

#[test]
fn run_pack_applies_the_manifests_sandbox_settings() {
    let root = shared_tempdir("nodecell-cli-");
    let packs = shared_tempdir("nodecell-packs-");
    let p = write_pack(
        packs.path(),
        "s",
        "name: settings\nsandbox:\n  writable_paths: [out]\n  timeout: 2\n",
    );
    let out_dir = p.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // The pack folder is read-only inside, its `out` is writable, cwd is the pack.
    let code = "import os\nopen('out/ok', 'w').write('x')\ntry:\n    open('nope', 'w')\n    print('pack dir writable')\nexcept OSError:\n    print('pack dir read-only')\nprint(os.getcwd())";
    let o = run_pack(root.path(), &p, &["python", "-c", code]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("pack dir read-only"), "{stdout}");
    assert!(
        stdout.contains(&p.canonicalize().unwrap().display().to_string()),
        "{stdout}"
    );
    assert!(out_dir.join("ok").exists());
    // timeout: 2 seconds from the manifest; the launcher exits 124 on timeout.
    let o = run_pack(
        root.path(),
        &p,
        &["python", "-c", "import time; time.sleep(60)"],
    );
    assert_eq!(o.status.code(), Some(124), "{}", text(&o).1);
}
