use super::collect::INSTALL_PY_NOTE;
use super::reqtxt::decode;
use super::*;

/// A pack folder with the given files.
fn pack(name: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, text) in files {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    (t, dir)
}

fn deps(r: &MigrateReport) -> Vec<&str> {
    r.dependencies.iter().map(|d| d.value.as_str()).collect()
}

#[track_caller]
fn finding<'a>(list: &'a [Finding], kind: FindingKind, text_has: &str) -> &'a Finding {
    list.iter()
        .find(|f| f.kind == kind && f.text.contains(text_has))
        .unwrap_or_else(|| panic!("no {kind:?} finding about {text_has:?} in {list:#?}"))
}

#[test]
fn requirements_txt_pack() {
    let (_t, dir) = pack(
        "ComfyUI-Req Pack",
        &[
            (
                "requirements.txt",
                "# deps\n\
                 numpy>=1.24,<2  # core\n\
                 opencv-python-headless \\\n    >=4.8\n\
                 -r extra/more.txt\n\
                 --extra-index-url https://download.example.org/whl/cu121\n\
                 --index-url=https://pypi.example.org/simple\n\
                 -f https://example.org/wheels/\n\
                 git+https://github.com/org/repo.git@v1.0#egg=repo\n\
                 pywin32 ; sys_platform == \"win32\"\n\
                 -e .\n\
                 ./vendor/pkg\n\
                 numpy=1.2\n\
                 scipy==1.11.4 --hash=sha256:abcd\n\
                 -c constraints.txt\n\
                 --pre\n\
                 -r missing.txt\n",
            ),
            ("extra/more.txt", "pillow>=10\n-r ../requirements.txt\n"),
        ],
    );
    let r = infer(&dir).unwrap();
    assert_eq!(r.name.value, "ComfyUI-Req_Pack");
    assert!(r.name.note.is_some());
    assert_eq!(r.name.from, "folder name");
    assert_eq!(
        deps(&r),
        vec![
            "numpy>=1.24,<2",
            "opencv-python-headless >=4.8",
            "pillow>=10",
            "git+https://github.com/org/repo.git@v1.0#egg=repo",
            "pywin32 ; sys_platform == \"win32\"",
            "scipy==1.11.4",
        ]
    );
    assert_eq!(r.dependencies[2].from, "extra/more.txt:1");
    assert_eq!(r.dependencies[1].from, "requirements.txt:3");
    assert_eq!(
        r.index_url.as_ref().unwrap().value,
        "https://pypi.example.org/simple"
    );
    assert_eq!(
        r.extra_index_urls[0].value,
        "https://download.example.org/whl/cu121"
    );
    assert_eq!(r.find_links[0].value, "https://example.org/wheels/");
    assert!(!r.share_torch.value && r.isolated.value);
    let n = &r.not_inferred;
    assert_eq!(
        finding(n, FindingKind::Editable, "-e .").from,
        "requirements.txt:11"
    );
    finding(n, FindingKind::LocalPath, "./vendor/pkg");
    let bad = finding(n, FindingKind::Unparseable, "numpy=1.2");
    assert!(
        bad.message.contains("expected a valid version operator"),
        "{bad:?}"
    );
    finding(n, FindingKind::UnsupportedOption, "--hash=sha256:abcd");
    finding(n, FindingKind::UnsupportedOption, "-c constraints.txt");
    finding(n, FindingKind::UnsupportedOption, "--pre");
    finding(n, FindingKind::Include, "-r missing.txt");
    // In file order, line order.
    let lines: Vec<usize> = n
        .iter()
        .map(|f| f.from.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{n:#?}");
    assert_eq!(r.sources, vec!["requirements.txt", "extra/more.txt"]);
    // The text says the same as the report (infer checked it too).
    let m = parse_manifest(
        &r.manifest_path,
        &r.manifest,
        ManifestFormat::Manifest,
        &dir,
    )
    .unwrap();
    assert_eq!(m.dependencies.len(), 6);
    assert!(
        r.manifest.contains("#   numpy=1.2  (requirements.txt:13)"),
        "{}",
        r.manifest
    );
}

#[test]
fn proves_conflicts_and_only_those() {
    let (_t, dir) = pack(
        "c",
        &[
            ("requirements.txt", "numpy==1.26.4\npillow>=9\nfoo @ https://h/foo-1.whl\n"),
            (
                "pyproject.toml",
                "[project]\nname='c'\ndependencies=['numpy>=2', 'pillow<12', 'numpy==1.26.4', 'foo @ https://h/foo-2.whl']\n",
            ),
        ],
    );
    let r = infer(&dir).unwrap();
    assert_eq!(
        deps(&r),
        vec![
            "numpy==1.26.4",
            "pillow>=9",
            "foo @ https://h/foo-1.whl",
            "pillow<12"
        ]
    );
    let c = finding(&r.not_inferred, FindingKind::Conflict, "numpy>=2");
    assert_eq!(c.from, "pyproject.toml: project.dependencies[0]");
    assert!(
        c.message.contains("`numpy==1.26.4` (requirements.txt:1)"),
        "{c:?}"
    );
    finding(&r.not_inferred, FindingKind::Conflict, "foo-2.whl");
}

#[test]
fn pyproject_with_comfy_isolation() {
    let (_t, dir) = pack(
        "folder-name",
        &[(
            "pyproject.toml",
            "[project]\nname = \"comfyui-iso\"\nversion = \"1.0\"\ndependencies = [\"numpy<2\", \"torch>=2.1\", 3]\n\
             [tool.comfy]\nPublisherId = \"me\"\nDisplayName = \"Iso\"\n\
             [tool.comfy.isolation]\ncan_isolate = true\nshare_torch = true\n\
             extra_index_urls = [\"https://download.pytorch.org/whl/cu121\", \"not a url\"]\n\
             package_manager = \"uv\"\n",
        )],
    );
    let r = infer(&dir).unwrap();
    assert_eq!(r.name.value, "comfyui-iso");
    assert_eq!(r.name.from, "pyproject.toml: project.name");
    assert_eq!(r.version.as_ref().unwrap().value, "1.0");
    assert!(r.isolated.value);
    assert_eq!(
        r.isolated.from,
        "pyproject.toml: tool.comfy.isolation.can_isolate"
    );
    assert!(r.share_torch.value);
    assert_eq!(
        r.share_torch.from,
        "pyproject.toml: tool.comfy.isolation.share_torch"
    );
    assert_eq!(deps(&r), vec!["numpy<2"]);
    finding(&r.dropped, FindingKind::SharedTorch, "torch>=2.1");
    assert_eq!(r.extra_index_urls.len(), 1);
    finding(&r.not_inferred, FindingKind::Unparseable, "not a url");
    finding(&r.not_inferred, FindingKind::Unparseable, "3");
    finding(&r.check, FindingKind::Ignored, "package_manager");
    finding(
        &r.check,
        FindingKind::SharedTorch,
        "download.pytorch.org/whl/cu121",
    );
    // The version stays a string (YAML would read 1.0 as a number).
    assert!(r.manifest.contains("version: \"1.0\""), "{}", r.manifest);

    let (_t, dir) = pack(
        "p",
        &[
            (
                "pyproject.toml",
                "[project]\nname='p'\ndependencies=['torch']\n[tool.comfy.isolation]\ncan_isolate=false\nshare_torch=false\n",
            ),
            ("nodes.py", "import torch\n"),
        ],
    );
    let r = infer(&dir).unwrap();
    assert!(!r.isolated.value && !r.share_torch.value);
    assert_eq!(deps(&r), vec!["torch"]);
    finding(&r.check, FindingKind::SharedTorch, "share_torch = false");
    finding(&r.check, FindingKind::Ignored, "can_isolate = false");

    let (_t, dir) = pack("broken", &[("pyproject.toml", "[project\nname='x'\n")]);
    let r = infer(&dir).unwrap();
    assert_eq!(r.name.value, "broken");
    let f = finding(&r.not_inferred, FindingKind::Unreadable, "");
    assert_eq!(f.from, "pyproject.toml:1");
}

#[test]
fn torch_is_shared_and_companions_unpinned() {
    let (_t, dir) = pack(
        "t",
        &[(
            "requirements.txt",
            "torch==2.1.0+cu118\ntorchvision==0.16.0\ntorchaudio>=2.0\nxformers==0.0.23 ; platform_system == \"Linux\"\n\
             kornia\nhttps://download.pytorch.org/whl/cu118/torch-2.1.0%2Bcu118-cp311-cp311-linux_x86_64.whl\n",
        )],
    );
    let r = infer(&dir).unwrap();
    assert!(r.share_torch.value);
    assert!(
        r.share_torch.from.contains("requirements.txt:1"),
        "{}",
        r.share_torch.from
    );
    assert_eq!(
        deps(&r),
        vec![
            "torchvision",
            "torchaudio>=2.0",
            "xformers ; platform_system == \"Linux\"",
            "kornia"
        ]
    );
    assert_eq!(r.dropped.len(), 2, "{:#?}", r.dropped);
    finding(&r.check, FindingKind::TorchCompanion, "torchvision==0.16.0");
    finding(&r.check, FindingKind::TorchCompanion, "xformers==0.0.23");
    assert!(r.dependencies[0]
        .note
        .as_ref()
        .unwrap()
        .contains("was torchvision==0.16.0"));

    // `import torch` alone is enough; nothing else is touched.
    let (_t, dir) = pack(
        "imp",
        &[
            ("requirements.txt", "numpy\n"),
            ("__init__.py", "from .nodes import NODE_CLASS_MAPPINGS\n"),
            ("nodes/impl.py", "import os, torch.nn.functional as F\n"),
            (".venv/lib/x.py", "import torch\n"),
        ],
    );
    let r = infer(&dir).unwrap();
    assert!(r.share_torch.value);
    assert_eq!(r.torch_evidence.len(), 1);
    assert_eq!(r.torch_evidence[0].from, "nodes/impl.py:1");
    assert_eq!(r.torch_evidence[0].value, "import torch.nn.functional");
    assert_eq!(deps(&r), vec!["numpy"]);

    let (_t, dir) = pack(
        "none",
        &[(
            "nodes.py",
            "# import torch\nimport torchsde_like\nx = 'from torch import nn'\n",
        )],
    );
    let r = infer(&dir).unwrap();
    assert!(!r.share_torch.value, "{:?}", r.torch_evidence);
    finding(&r.check, FindingKind::Ignored, "");
}

#[test]
fn install_py_hints() {
    let src = r#"
import subprocess, sys, os
# pip install commented-out
req = os.path.join(os.path.dirname(__file__), "requirements.txt")
subprocess.check_call([sys.executable, "-s", "-m", "pip", "install", "-r", req])
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--upgrade', 'opencv-python>=4.8', "--index-url", "https://idx.example.org/simple"])
os.system("pip install 'scikit-image>=0.21' --no-deps && echo done")
os.system(f"{sys.executable} -m pip install insightface==0.7.3")
os.system("pip install " + extra_pkg)
pip.main(["install", "onnxruntime"])
subprocess.run(["uv", "pip", "install", *more])
packages = [
"segment-anything",
"timm>=0.9",
]
for pkg in ("ultralytics",):
subprocess.check_call([sys.executable, "-m", "pip", "install", pkg])
required_dirs = ["models", "output"]
subprocess.run(["pip", "install", "."])
"#;
    let (_t, dir) = pack(
        "ip",
        &[("install.py", src), ("requirements.txt", "numpy\n")],
    );
    let r = infer(&dir).unwrap();
    assert_eq!(
        deps(&r),
        vec![
            "numpy",
            "opencv-python>=4.8",
            "scikit-image>=0.21",
            "insightface==0.7.3",
            "onnxruntime",
            "segment-anything",
            "timm>=0.9",
            "ultralytics",
        ]
    );
    for d in &r.dependencies[1..] {
        assert_eq!(d.note.as_deref(), Some(INSTALL_PY_NOTE), "{d:?}");
        assert!(d.from.starts_with("install.py:"), "{d:?}");
    }
    assert_eq!(r.dependencies[1].from, "install.py:6");
    assert_eq!(r.dependencies[5].from, "install.py:12");
    assert!(r.index_url.is_none());
    let idx = &r.extra_index_urls[0];
    assert_eq!(idx.value, "https://idx.example.org/simple");
    assert!(
        idx.note.as_ref().unwrap().ends_with(INSTALL_PY_NOTE),
        "{idx:?}"
    );
    assert!(
        idx.note.as_ref().unwrap().contains("was --index-url"),
        "{idx:?}"
    );
    finding(&r.check, FindingKind::InstallPy, "opencv-python>=4.8");
    finding(&r.check, FindingKind::InstallPy, "-r req");
    finding(&r.not_inferred, FindingKind::InstallPy, "computed");
    finding(&r.not_inferred, FindingKind::InstallPy, "*more");
    finding(&r.not_inferred, FindingKind::LocalPath, "pip install .");
    assert!(!deps(&r).contains(&"models"));
    assert!(r
        .check
        .iter()
        .any(|f| f.from == "install.py" && f.message.contains("does not run it")));
}

#[test]
fn names() {
    assert_eq!(sanitize_name("ComfyUI-Impact-Pack"), "ComfyUI-Impact-Pack");
    assert_eq!(sanitize_name("My Pack (v2)!"), "My_Pack_v2");
    assert_eq!(sanitize_name("  .hidden_"), "hidden");
    assert_eq!(sanitize_name("日本"), "pack");
    assert_eq!(
        wheel_name("https://h/whl/torch-2.1.0%2Bcu118-cp311-none.whl#sha256=x").as_deref(),
        Some("torch")
    );
    assert_eq!(wheel_name("https://h/x.tar.gz"), None);
}

#[test]
fn awkward_values_round_trip() {
    // Names YAML would read as other types, markers with both quote
    // kinds, URLs with fragments and `@`.
    for name in ["true", "1.0", "null", "123", "yes"] {
        let (_t, dir) = pack(
            "x",
            &[(
                "pyproject.toml",
                &format!(
                    "[project]\nname = '{name}'\nversion = '2.10'\ndependencies = [\"a[b,c]>=1; python_version >= '3.9' and os_name == \\\"posix\\\"\", 'pkg @ git+https://h/r.git@v1#egg=pkg&subdirectory=s', 'x~=1.4.2']\n"
                ),
            )],
        );
        let r = infer(&dir).unwrap();
        assert_eq!(r.name.value, name);
        let m = parse_manifest(
            &r.manifest_path,
            &r.manifest,
            ManifestFormat::Manifest,
            &dir,
        )
        .unwrap();
        assert_eq!(m.name, name);
        assert_eq!(m.version.as_deref(), Some("2.10"));
        assert_eq!(m.dependencies.len(), 3, "{}", r.manifest);
    }
}

#[test]
fn utf16_and_bom() {
    let (text, lossy) = decode(b"\xef\xbb\xbfnumpy\n");
    assert_eq!((text.as_str(), lossy), ("numpy\n", false));
    let mut b = vec![0xff, 0xfe];
    for u in "numpy==1.0\r\n".encode_utf16() {
        b.extend_from_slice(&u.to_le_bytes());
    }
    assert_eq!(decode(&b), ("numpy==1.0\r\n".to_string(), false));
    assert!(decode(b"nump\xff\n").1);
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("requirements.txt"), &b).unwrap();
    let r = infer(t.path()).unwrap();
    assert_eq!(deps(&r), vec!["numpy==1.0"]);
}

#[test]
fn writes_refuses_forces_and_dry_runs() {
    let (_t, dir) = pack("w", &[("requirements.txt", "numpy>=1.24\ntorch\n")]);
    let dry = migrate(
        &dir,
        MigrateOptions {
            dry_run: true,
            force: false,
            app: None,
        },
    )
    .unwrap();
    assert!(!dry.written && !dir.join(MANIFEST_FILE).exists());
    let r = migrate(&dir, MigrateOptions::default()).unwrap();
    assert!(r.written && !r.replaced);
    assert_eq!(
        std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap(),
        dry.manifest
    );
    let p = Pack::load(&dir).unwrap();
    assert_eq!(p.manifest.name, "w");
    assert!(p.manifest.share_torch && p.manifest.isolated);
    assert_eq!(p.manifest.dependencies[0].as_written(), "numpy>=1.24");

    std::fs::write(dir.join(MANIFEST_FILE), "name: mine\n").unwrap();
    let e = migrate(&dir, MigrateOptions::default()).unwrap_err();
    assert!(matches!(e, MigrateError::Exists { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap(),
        "name: mine\n"
    );
    // A dry run still works, and still writes nothing.
    migrate(
        &dir,
        MigrateOptions {
            dry_run: true,
            force: false,
            app: None,
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap(),
        "name: mine\n"
    );
    std::fs::write(
        dir.join(MANIFEST_FILE),
        "name: mine\nsandbox:\n  max_memory: 1GB\n",
    )
    .unwrap();
    let r = migrate(
        &dir,
        MigrateOptions {
            force: true,
            dry_run: false,
            app: None,
        },
    )
    .unwrap();
    assert!(r.written && r.replaced);
    let lost = r
        .check
        .iter()
        .find(|f| f.from == MANIFEST_FILE)
        .expect("sandbox settings reported");
    assert_eq!(lost.text, "sandbox");
    assert_eq!(Pack::load(&dir).unwrap().manifest.name, "w");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // A manifest.yml is a manifest too.
    std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    std::fs::write(dir.join("manifest.yml"), "name: yml\n").unwrap();
    let e = migrate(&dir, MigrateOptions::default()).unwrap_err();
    assert!(e.to_string().contains("manifest.yml already exists"), "{e}");
    let r = migrate(
        &dir,
        MigrateOptions {
            force: true,
            dry_run: false,
            app: None,
        },
    )
    .unwrap();
    assert!(
        r.check.iter().any(|f| f.from == "manifest.yml"),
        "{:?}",
        r.check
    );
    assert_eq!(Pack::load(&dir).unwrap().manifest.name, "w");

    let e = migrate(&dir.join("requirements.txt"), MigrateOptions::default()).unwrap_err();
    assert!(matches!(e, MigrateError::NotAPack { .. }), "{e}");
}

#[test]
fn never_writes_an_unparseable_manifest() {
    // Lines put together from pieces of the requirement grammar (and
    // garbage), in every source: inference reports what it cannot use,
    // it never fails or writes something the manifest parser rejects.
    const PIECES: [&str; 48] = [
        "numpy",
        "a",
        "b.c",
        "x_y",
        "torch",
        "torchvision",
        "[",
        "]",
        ",",
        "extra",
        ">=",
        "==",
        "<",
        "~=",
        "1.0",
        "2",
        "1.*",
        " ; ",
        "python_version",
        " < ",
        "'3.9'",
        "\"3\"",
        " and ",
        " @ ",
        "git+https://h/r.git",
        "#egg=x",
        " # c",
        " ",
        "\\\n",
        "\n",
        "\n",
        "\n",
        "-r ",
        "-e ",
        "--hash=x",
        ":",
        ": ",
        "' '",
        "*",
        "!",
        "&",
        "{",
        "}",
        "|",
        ">",
        "é",
        "\"",
        "'",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t = tempfile::tempdir().unwrap();
    let mut written = 0;
    for i in 0..200 {
        let mut gen = |pieces: u64| -> String {
            let n = next() % pieces;
            (0..n)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect()
        };
        let dir = t.path().join(format!("p{i}"));
        std::fs::create_dir(&dir).unwrap();
        let req = gen(60);
        let install = format!(
            "subprocess.run(['pip', 'install', {:?}])\nos.system({:?})\npackages = [{:?}]\n",
            gen(8),
            format!("pip install {}", gen(8)),
            gen(6)
        );
        let pyproject = format!(
            "[project]\nname = {:?}\nversion = {:?}\ndependencies = [{:?}, {:?}]\n[tool.comfy.isolation]\nextra_index_urls = [{:?}]\n",
            gen(6),
            gen(4),
            gen(10),
            gen(10),
            gen(4)
        );
        std::fs::write(dir.join("requirements.txt"), &req).unwrap();
        std::fs::write(dir.join("install.py"), &install).unwrap();
        std::fs::write(dir.join("pyproject.toml"), &pyproject).unwrap();
        match infer(&dir) {
            Ok(r) => written += r.dependencies.len(),
            Err(e) => panic!("{e}\n--- requirements.txt\n{req}\n--- install.py\n{install}\n--- pyproject.toml\n{pyproject}"),
        }
    }
    // The generator does reach valid requirements.
    assert!(written > 100, "{written}");
}

/// A pack as real ones are (WAS-style pins, git+ requirements, a config file
/// written into its folder) inside a ComfyUI-shaped app folder.
#[test]
fn real_pack_shapes_inside_an_app() {
    let t = tempfile::tempdir().unwrap();
    let app = t.path().join("ComfyUI");
    std::fs::create_dir_all(app.join("custom_nodes")).unwrap();
    std::fs::write(app.join("folder_paths.py"), "").unwrap();
    std::fs::write(
        app.join("requirements.txt"),
        "torch\nnumpy>=1.25.0\nPillow\naiohttp>=3.11.8\nscipy\n",
    )
    .unwrap();
    let dir = app.join("custom_nodes").join("was-like");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("requirements.txt"),
        "numpy\npillow>=10.3.0\nscipy\ngit+https://github.com/Org/img2texture.git\nopencv-python-headless[ffmpeg]<=4.7.0.72\ncolor-matcher\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("__init__.py"),
        "import os, json, torch\nROOT = os.path.dirname(os.path.abspath(__file__))\nCONF = os.path.join(ROOT, 'was_config.json')\nwith open(CONF, 'w') as f:\n    json.dump({}, f)\n",
    )
    .unwrap();
    let r = infer(&dir).unwrap();
    assert_eq!(
        r.app.as_ref().map(|a| a.value.clone()),
        Some(app.canonicalize().unwrap().display().to_string())
    );
    let shared: Vec<&str> = r.shared.iter().map(|d| d.value.as_str()).collect();
    assert_eq!(
        shared,
        ["numpy", "pillow>=10.3.0", "scipy"],
        "{}",
        r.manifest
    );
    assert_eq!(
        deps(&r),
        [
            "git+https://github.com/Org/img2texture.git",
            "opencv-python-headless[ffmpeg]<=4.7.0.72",
            "color-matcher",
            "numpy<2"
        ],
        "{}",
        r.manifest
    );
    let vcs = finding(&r.check, FindingKind::Vcs, "img2texture");
    assert!(
        vcs.message.contains("github.com") && vcs.message.contains("network"),
        "{vcs:?}"
    );
    let abi = finding(&r.check, FindingKind::NumpyAbi, "numpy<2");
    assert!(
        abi.message.contains("4.10.0.82") && abi.message.contains("numpy 1.x"),
        "{abi:?}"
    );
    let w = finding(&r.check, FindingKind::FolderWrite, "open(CONF, 'w')");
    assert_eq!(w.from, "__init__.py:4");
    finding(&r.check, FindingKind::Limits, "max_memory: 8GB");
    // The text says the same (infer checked it with the parser; read it here too).
    let m = parse_manifest(
        &r.manifest_path,
        &r.manifest,
        ManifestFormat::Manifest,
        &dir,
    )
    .unwrap();
    assert_eq!(m.shared.len(), 3);
    assert_eq!(m.sandbox.max_pids, Some(512));
    assert_eq!(m.sandbox.max_memory, Some(8_000_000_000));
    assert!(!m.sandbox.network);
    assert!(
        r.manifest
            .contains("# defaults written by nodecell migrate: review them"),
        "{}",
        r.manifest
    );
    // A pack outside any app: nothing is shared; an explicit app is used.
    let lone = t.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::write(
        lone.join("requirements.txt"),
        "pillow\nnumpy>=2\nopencv-python==4.8.1.78\n",
    )
    .unwrap();
    let r = infer(&lone).unwrap();
    assert!(r.shared.is_empty() && r.app.is_none());
    let c = finding(&r.not_inferred, FindingKind::NumpyAbi, "numpy>=2");
    assert!(c.message.contains("opencv-python==4.8.1.78"), "{c:?}");
    let r = infer_with(&lone, Some(&app)).unwrap();
    assert_eq!(
        r.shared
            .iter()
            .map(|d| d.value.as_str())
            .collect::<Vec<_>>(),
        ["pillow", "numpy>=2"]
    );
}
