//! Provisioning against real uv, real PyPI packages and the repository's
//! `.venv` (made by `scripts/setup.sh` with Debian's python3.11; it holds
//! numpy 2.x and torch) as "the host".
//!
//! Venvs go into world-readable temporary roots under /tmp (sandboxed
//! workers, never uid 0, must be able to read them); uv's cache is shared
//! (`$HOME/.cache/nodecell-dev/uv`), so packages download once.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use nodecell_provision::{Error, Event, EventKind, LaunchSettings, NoEvents, Options, Provisioner};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The host interpreter: the repository's `.venv` (scripts/setup.sh).
fn host_python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

fn host_site_packages() -> PathBuf {
    let out = Command::new(host_python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
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

fn options(root: &Path) -> Options {
    Options {
        root: Some(root.to_path_buf()),
        host_python: Some(host_python()),
        uv_cache_dir: Some(uv_cache()),
        ..Options::default()
    }
}

fn write_pack(parent: &Path, dir: &str, manifest: &str) -> PathBuf {
    let d = parent.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("manifest.yaml"), manifest).unwrap();
    d
}

/// Venv folders in a root (not the dot-folders).
fn entries(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn tmp_entries(root: &Path) -> usize {
    std::fs::read_dir(root.join(".tmp"))
        .map(|r| r.count())
        .unwrap_or(0)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Runs `code` with `python` as a sandboxed worker would: as uid 65534 when
/// the tests run as root (so everything it reads must be world-readable),
/// with the host's site-packages on PYTHONPATH (what a careless launcher
/// would leak) unless `settings` removes it.
fn run_py(python: &Path, settings: Option<&LaunchSettings>, code: &str) -> (bool, String, String) {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(python);
        c
    } else {
        Command::new(python)
    };
    cmd.args(["-c", code])
        .env("PYTHONPATH", host_site_packages())
        .current_dir("/");
    if let Some(s) = settings {
        s.apply_env(&mut cmd);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn collect() -> (Arc<Mutex<Vec<Event>>>, impl Fn(&Event) + Sync) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e2 = events.clone();
    (events, move |e: &Event| e2.lock().unwrap().push(e.clone()))
}

#[test]
fn two_numpy_versions_side_by_side_and_pins_beat_the_host() {
    let root = shared_tempdir("nodecell-prov-");
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
    let p = Provisioner::new(options(root.path())).unwrap();
    let (events, sink) = collect();
    let a = p.launch_settings(&old, &sink).unwrap();
    let b = p.launch_settings(&new, &NoEvents).unwrap();
    assert_ne!(a.venv.key, b.venv.key);
    assert!(!a.venv.cache_hit && !b.venv.cache_hit);
    assert_eq!(entries(root.path()).len(), 2);
    assert_eq!(tmp_entries(root.path()), 0);

    // Progress events of a real build, in order.
    let names: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("no {n} event in {names:?}"))
    };
    assert!(
        pos("resolving") < pos("downloading")
            && pos("downloading") < pos("installing")
            && pos("installing") < pos("done"),
        "{names:?}"
    );
    let done = events.lock().unwrap().last().cloned().unwrap();
    match done.kind {
        EventKind::Done {
            cache_hit,
            installed,
            packages,
            ..
        } => {
            assert!(!cache_hit);
            assert_eq!(installed, 1);
            assert_eq!(packages, 1);
        }
        other => panic!("last event {other:?}"),
    }

    // The host (.venv) has numpy 2.x: make sure the shadowing check below can fail.
    let (ok, host_version, _) = run_py(
        &host_python(),
        None,
        "import numpy; print(numpy.__version__)",
    );
    assert!(
        ok && host_version.starts_with("2."),
        "host numpy: {host_version}"
    );
    let code = "import numpy; print(numpy.__version__, numpy.__file__)";
    let (_, leaked, _) = run_py(&a.python, None, code);
    assert!(
        leaked.starts_with(&host_version),
        "with the host's PYTHONPATH the host's numpy shadows the pin: {leaked}"
    );

    // With the launch settings the pack's pins win.
    let (ok, out, err) = run_py(&a.python, Some(&a), code);
    assert!(ok, "{err}");
    assert!(out.starts_with("1.26.4 "), "{out}");
    assert!(out.contains(&a.venv.path.display().to_string()), "{out}");
    let (ok, out, err) = run_py(&b.python, Some(&b), code);
    assert!(ok, "{err}");
    assert!(out.starts_with("2."), "{out}");
    assert!(out.contains(&b.venv.path.display().to_string()), "{out}");

    // Launch settings: interpreter, PATH, read-only and cwd.
    assert_eq!(
        a.resolve_program("python"),
        Some(a.venv.path.join("bin/python"))
    );
    assert!(a
        .env
        .iter()
        .any(|(k, v)| k == "VIRTUAL_ENV" && Path::new(v) == a.venv.path));
    assert!(a.readonly_paths.contains(&a.venv.path));
    assert!(
        a.readonly_paths.contains(&PathBuf::from("/usr")),
        "{:?}",
        a.readonly_paths
    );
    assert!(a.readonly_paths.contains(&old.canonicalize().unwrap()));
    assert_eq!(a.cwd, old.canonicalize().unwrap());
    assert!(!a.network && !a.gpu);

    // Everything a sandboxed (unprivileged) worker reads is world-readable.
    for p in [
        &a.venv.path,
        &a.venv.python,
        &a.venv.info.site_packages.join("numpy/__init__.py"),
    ] {
        nodecell_provision::interpreter::check_world_access(p, false).unwrap();
    }
}

#[test]
fn second_call_is_a_cache_hit_and_packs_with_the_same_needs_share_it() {
    let root = shared_tempdir("nodecell-prov-");
    let packs = shared_tempdir("nodecell-packs-");
    let one = write_pack(
        packs.path(),
        "one",
        "name: one\ndependencies:\n  - numpy==1.26.4\n",
    );
    let two = write_pack(
        packs.path(),
        "two",
        "name: two\ndependencies:\n  - NumPy == 1.26.4\n",
    );
    let first = Provisioner::new(options(root.path()))
        .unwrap()
        .provision_dir(&one, &NoEvents)
        .unwrap();
    assert!(!first.cache_hit);

    let (events, sink) = collect();
    let t = std::time::Instant::now();
    let again = Provisioner::new(options(root.path()))
        .unwrap()
        .provision_dir(&one, &sink)
        .unwrap();
    let took = t.elapsed();
    assert!(again.cache_hit, "second call rebuilt");
    assert_eq!(again.path, first.path);
    let ev = events.lock().unwrap().clone();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        matches!(
            ev[0].kind,
            EventKind::Done {
                cache_hit: true,
                ..
            }
        ),
        "{ev:?}"
    );
    eprintln!("cache hit took {took:?}");

    // Same requirements written differently: same key, same venv.
    let shared = Provisioner::new(options(root.path()))
        .unwrap()
        .provision_dir(&two, &NoEvents)
        .unwrap();
    assert!(shared.cache_hit);
    assert_eq!(shared.path, first.path);
    let listed = nodecell_provision::VenvCache::open(root.path())
        .list()
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].packs, vec!["one".to_string(), "two".to_string()]);
}

#[test]
fn concurrent_provisioning_of_one_key_builds_once() {
    let root = shared_tempdir("nodecell-prov-");
    let packs = shared_tempdir("nodecell-packs-");
    let dir = write_pack(
        packs.path(),
        "same",
        "name: same\ndependencies:\n  - numpy>=2,<3\n  - packaging\n",
    );
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let dir = dir.clone();
                let root = root.path().to_path_buf();
                s.spawn(move || {
                    Provisioner::new(options(&root))
                        .unwrap()
                        .provision_dir(&dir, &NoEvents)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0].path, results[1].path);
    assert_eq!(
        results.iter().filter(|v| !v.cache_hit).count(),
        1,
        "exactly one build: {results:?}"
    );
    assert_eq!(entries(root.path()).len(), 1);
    assert_eq!(tmp_entries(root.path()), 0);
}

#[test]
fn a_broken_requirement_reports_uv_error_and_leaves_no_entry() {
    let root = shared_tempdir("nodecell-prov-");
    let packs = shared_tempdir("nodecell-packs-");
    let dir = write_pack(
        packs.path(),
        "broken",
        "name: broken\ndependencies:\n  - numpy==1.26.4\n  - nodecell-test-no-such-distribution-xyz==1.0\n",
    );
    let (events, sink) = collect();
    let err = Provisioner::new(options(root.path()))
        .unwrap()
        .provision_dir(&dir, &sink)
        .unwrap_err();
    match &err {
        Error::Uv {
            pack,
            stderr,
            command,
            ..
        } => {
            assert_eq!(pack, "broken");
            assert!(
                stderr.contains("nodecell-test-no-such-distribution-xyz"),
                "uv's own text: {stderr}"
            );
            assert!(command.contains("pip install"), "{command}");
        }
        other => panic!("expected a uv error, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("nodecell-test-no-such-distribution-xyz"),
        "{err}"
    );
    assert!(matches!(
        events.lock().unwrap().last().map(|e| &e.kind),
        Some(EventKind::Failed { .. })
    ));
    assert!(
        entries(root.path()).is_empty(),
        "{:?}",
        entries(root.path())
    );
    assert_eq!(tmp_entries(root.path()), 0);

    // A bad manifest is refused before anything is built.
    let bad = write_pack(
        packs.path(),
        "bad",
        "name: bad\ndependencies:\n  - numpy>=\n",
    );
    let err = Provisioner::new(options(root.path()))
        .unwrap()
        .provision_dir(&bad, &NoEvents)
        .unwrap_err();
    match &err {
        Error::Manifest(m) => {
            assert_eq!(m.field(), Some("dependencies[0]"));
            assert_eq!(m.line(), Some(3));
            assert!(m.path().ends_with("bad/manifest.yaml"));
        }
        other => panic!("expected a manifest error, got {other}"),
    }
    assert!(entries(root.path()).is_empty());
}

#[test]
fn git_dependency_from_a_local_repository() {
    let root = shared_tempdir("nodecell-prov-");
    let work = shared_tempdir("nodecell-git-");
    let repo_dir = work.path().join("probe");
    std::fs::create_dir_all(repo_dir.join("nodecell_git_probe")).unwrap();
    std::fs::write(
        repo_dir.join("pyproject.toml"),
        "[build-system]\nrequires = [\"flit_core>=3.4,<4\"]\nbuild-backend = \"flit_core.buildapi\"\n\n[project]\nname = \"nodecell-git-probe\"\nversion = \"1.0\"\ndescription = \"test package\"\n",
    )
    .unwrap();
    std::fs::write(
        repo_dir.join("nodecell_git_probe/__init__.py"),
        "WHERE = 'tag v1.0'\n",
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=nodecell",
                "-c",
                "user.email=nodecell@localhost",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&repo_dir)
            .output()
            .expect("git is installed by scripts/setup.sh");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "v1.0"]);
    git(&["tag", "v1.0"]);
    // A later commit that the tag must not see.
    std::fs::write(
        repo_dir.join("nodecell_git_probe/__init__.py"),
        "WHERE = 'main'\n",
    )
    .unwrap();
    git(&["commit", "-q", "-am", "later"]);

    let dep = format!("git+file://{}@v1.0", repo_dir.display());
    let pack = write_pack(
        work.path(),
        "pack",
        &format!("name: gitpack\ndependencies:\n  - {dep}\n"),
    );
    let s = Provisioner::new(options(root.path()))
        .unwrap()
        .launch_settings(&pack, &NoEvents)
        .unwrap();
    let (ok, out, err) = run_py(
        &s.python,
        Some(&s),
        "import nodecell_git_probe as m; print(m.WHERE)",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "tag v1.0");
}

#[test]
fn reprovisioning_works_offline_from_uv_cache() {
    let packs = shared_tempdir("nodecell-packs-");
    let dir = write_pack(
        packs.path(),
        "off",
        "name: off\ndependencies:\n  - numpy==1.26.4\n",
    );
    let online = shared_tempdir("nodecell-prov-");
    Provisioner::new(options(online.path()))
        .unwrap()
        .provision_dir(&dir, &NoEvents)
        .unwrap();
    // A fresh cache root, no network: everything comes from uv's cache.
    let offline = shared_tempdir("nodecell-prov-");
    let mut o = options(offline.path());
    o.offline = true;
    let v = Provisioner::new(o)
        .unwrap()
        .provision_dir(&dir, &NoEvents)
        .unwrap();
    assert!(!v.cache_hit);
    let out = Command::new(&v.python)
        .args(["-c", "import numpy; print(numpy.__version__)"])
        .env_remove("PYTHONPATH")
        .output()
        .unwrap();
    let (ok, out, err) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "{err}");
    assert_eq!(out, "1.26.4");
}

#[test]
fn manifest_sandbox_settings_reach_the_launcher() {
    let root = shared_tempdir("nodecell-prov-");
    let packs = shared_tempdir("nodecell-packs-");
    let dir = write_pack(
        packs.path(),
        "s",
        "name: s\nsandbox:\n  network: true\n  writable_paths: [out]\n  readonly_paths: [/etc/ssl]\n  max_memory: 1GiB\n  max_cpu_percent: 50\n  max_pids: 32\n  timeout: 90\n  gpu: true\n",
    );
    let s = Provisioner::new(options(root.path()))
        .unwrap()
        .launch_settings(&dir, &NoEvents)
        .unwrap();
    let dir = dir.canonicalize().unwrap();
    assert!(s.network && s.gpu);
    assert_eq!(s.max_memory, Some(1 << 30));
    assert_eq!(s.max_cpu_percent, Some(50.0));
    assert_eq!(s.max_pids, Some(32));
    assert_eq!(s.timeout, Some(std::time::Duration::from_secs(90)));
    assert_eq!(s.writable_paths, vec![dir.join("out")]);
    assert!(s.readonly_paths.contains(&PathBuf::from("/etc/ssl")));
    assert!(s.env_remove.iter().any(|k| k == "PYTHONPATH"));
    // An empty dependency list is a plain venv.
    assert!(s.venv.info.packages.is_empty());
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["timeout"], 90.0);
}

/// One share_torch venv, checked every way, with real torch (the host
/// .venv's) and real torch-dependent packages from PyPI.
#[test]
fn share_torch_uses_the_host_torch_and_nothing_else() {
    let root = shared_tempdir("nodecell-prov-");
    let packs = shared_tempdir("nodecell-packs-");
    let host_site = host_site_packages();
    let host_torch_version = {
        let out = Command::new(host_python())
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('torch'))",
            ])
            .output()
            .unwrap();
        let v = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(
            !v.is_empty(),
            "the host .venv has no torch: run scripts/setup.sh (without NODECELL_SKIP_TORCH)"
        );
        v
    };
    // lion-pytorch needs torch; filelock is a torch dependency (unversioned in
    // torch's metadata) that the pack pins to another version than the host's.
    let dir = write_pack(
        packs.path(),
        "t",
        "name: torchy\nshare_torch: true\ndependencies:\n  - lion-pytorch==0.2.5\n  - filelock==3.16.1\n",
    );
    let p = Provisioner::new(options(root.path())).unwrap();
    let s = p.launch_settings(&dir, &NoEvents).unwrap();
    let site = &s.venv.info.site_packages;
    assert!(
        !site.join("torch").exists(),
        "a second torch was installed into the venv"
    );
    assert!(site
        .join(format!(
            "torch-{host_torch_version}.dist-info/NODECELL_SHARED"
        ))
        .exists());
    let shared = s
        .venv
        .info
        .shared_torch
        .as_ref()
        .expect("shared torch info");
    assert_eq!(
        shared.torch_version.as_deref(),
        Some(host_torch_version.as_str())
    );
    assert!(
        s.readonly_paths.contains(&host_site.join("torch")),
        "{:?}",
        s.readonly_paths
    );
    assert!(
        !s.readonly_paths.iter().any(|p| p.ends_with("numpy")),
        "numpy is not torch's: {:?}",
        s.readonly_paths
    );

    let script = r#"
import importlib.metadata as md, json, os, sys
out = {}
import torch, lion_pytorch, filelock
out["torch"] = torch.__version__
out["torch_meta"] = md.version("torch")
out["torch_real"] = os.path.realpath(torch.__file__)
out["filelock"] = filelock.__version__
out["filelock_file"] = filelock.__file__
out["matmul"] = float((torch.ones(2, 2) @ torch.ones(2, 2)).sum())
for leak in ["numpy", "pytest", "yaml", "maturin"]:
    try:
        __import__(leak)
        out[leak] = "LEAKED"
    except ModuleNotFoundError:
        out[leak] = "absent"
print(json.dumps(out))
"#;
    let (ok, out, err) = run_py(&s.python, Some(&s), script);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(v["torch_meta"], host_torch_version.as_str());
    assert!(
        v["torch"]
            .as_str()
            .unwrap()
            .starts_with(&host_torch_version),
        "{v}"
    );
    assert!(
        v["torch_real"]
            .as_str()
            .unwrap()
            .starts_with(&host_site.display().to_string()),
        "{v}"
    );
    assert_eq!(v["matmul"], 8.0);
    // The pack's pin beats the shared dependency (the host has another filelock).
    assert_eq!(v["filelock"], "3.16.1");
    assert!(
        v["filelock_file"]
            .as_str()
            .unwrap()
            .starts_with(&s.venv.path.display().to_string()),
        "{v}"
    );
    for leak in ["numpy", "pytest", "yaml", "maturin"] {
        assert_eq!(
            v[leak], "absent",
            "host package {leak} leaked into the venv: {v}"
        );
    }

    // Installing another torch-dependent package by hand does not pull a second torch.
    let out = Command::new(repo().join(".venv/bin/uv"))
        .args(["pip", "install", "--python"])
        .arg(&s.python)
        .arg("ema-pytorch==0.8.3")
        .env("UV_CACHE_DIR", uv_cache())
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("+ ema-pytorch"), "{text}");
    assert!(
        !text.contains("+ torch=="),
        "uv installed a second torch: {text}"
    );
    assert!(!site.join("torch").exists());

    // A pack that asks for another torch than the host's does not get one.
    let other = write_pack(
        packs.path(),
        "o",
        "name: oldtorch\nshare_torch: true\ndependencies:\n  - torch==2.4.0\n",
    );
    let err = p.provision_dir(&other, &NoEvents).unwrap_err();
    match err {
        Error::Uv { stderr, .. } => assert!(stderr.contains("torch"), "{stderr}"),
        other => panic!("expected uv's resolution error, got {other}"),
    }
    assert_eq!(entries(root.path()).len(), 1);
}

/// `shared:` (the pack's requirements taken from the host when its copy
/// satisfies them) and `Options::share` (the host app's own requirements,
/// shared with their closure, never installed), with the repository's .venv
/// as the host app's environment.
#[test]
fn shared_packages_come_from_the_host_and_pack_pins_still_win() {
    let root = shared_tempdir("nodecell-prov-");
    let packs = shared_tempdir("nodecell-packs-");
    let host_site = host_site_packages();
    // numpy>=2: the host's numpy 2.x satisfies it (shared); iniconfig==2.0.0:
    // the host has a newer one, so the pin is installed into the venv.
    let dir = write_pack(
        packs.path(),
        "s",
        "name: sharer\nshared:\n  - numpy>=2\n  - iniconfig==2.0.0\ndependencies: []\n",
    );
    let mut opts = options(root.path());
    // The "app": pytest and its closure (iniconfig, packaging, pluggy, pygments).
    opts.share = vec!["pytest".into(), "not-installed-anywhere".into()];
    let p = Provisioner::new(opts).unwrap();
    let s = p.launch_settings(&dir, &NoEvents).unwrap();
    let info = &s.venv.info;
    let shared = info.shared_torch.as_ref().expect("shared info");
    assert_eq!(
        shared.torch_version, None,
        "torch is not shared without share_torch"
    );
    assert_eq!(
        shared.roots,
        ["numpy", "iniconfig", "pytest", "not-installed-anywhere"]
    );
    let pkg = |n: &str| info.packages.iter().find(|p| p.name == n).cloned();
    assert!(
        pkg("numpy").is_some_and(|p| p.shared),
        "{:?}",
        info.packages
    );
    assert!(
        pkg("pytest").is_some_and(|p| p.shared),
        "{:?}",
        info.packages
    );
    assert!(
        pkg("pluggy").is_some_and(|p| p.shared),
        "{:?}",
        info.packages
    );
    let ini = pkg("iniconfig").expect("iniconfig");
    assert!(
        !ini.shared && ini.version == "2.0.0",
        "the pack's pin wins: {ini:?}"
    );
    assert!(
        pkg("not-installed-anywhere").is_none(),
        "an app requirement the host lacks is not installed"
    );
    assert!(
        pkg("torch").is_none() && pkg("mypy").is_none(),
        "{:?}",
        info.packages
    );
    assert!(
        s.readonly_paths.contains(&host_site.join("numpy")),
        "{:?}",
        s.readonly_paths
    );

    let script = r#"
import json, os, sys
out = {}
import numpy, pytest, iniconfig
out["numpy"] = os.path.realpath(numpy.__file__)
out["pytest"] = os.path.realpath(pytest.__file__)
out["iniconfig"] = iniconfig.__file__
for leak in ["torch", "mypy", "yaml"]:
    try:
        __import__(leak)
        out[leak] = "LEAKED"
    except ModuleNotFoundError:
        out[leak] = "absent"
print(json.dumps(out))
"#;
    let (ok, out, err) = run_py(&s.python, Some(&s), script);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let host = host_site.display().to_string();
    assert!(v["numpy"].as_str().unwrap().starts_with(&host), "{v}");
    assert!(v["pytest"].as_str().unwrap().starts_with(&host), "{v}");
    assert!(
        v["iniconfig"]
            .as_str()
            .unwrap()
            .starts_with(&s.venv.path.display().to_string()),
        "{v}"
    );
    for leak in ["torch", "mypy", "yaml"] {
        assert_eq!(v[leak], "absent", "host package {leak} leaked: {v}");
    }
    // Another set of shared roots is another venv.
    let mut opts2 = options(root.path());
    opts2.share = vec!["pytest".into()];
    let s2 = Provisioner::new(opts2)
        .unwrap()
        .launch_settings(&dir, &NoEvents)
        .unwrap();
    assert_ne!(s2.venv.key, s.venv.key);
}
