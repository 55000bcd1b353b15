"""The built wheel, as a user gets it: what it holds, what auditwheel says of its tag,
and a fresh venv from Debian's python where `pip install` of the wheel alone (uv
comes from PyPI as a dependency) runs the command line and an isolated extension
with its own dependency, with nothing of this checkout on PATH.

scripts/build-wheel.sh (which scripts/test.sh runs first) leaves the wheel in target/wheels.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3.11"


@pytest.fixture(scope="module")
def wheel() -> Path:
    wheels = sorted((REPO / "target" / "wheels").glob("nodecell-*.whl"), key=lambda p: p.stat().st_mtime)
    assert wheels, "no wheel in target/wheels: run scripts/build-wheel.sh"
    return wheels[-1]


def _elf_interpreter(data: bytes) -> bool:
    """Whether a 64-bit little-endian ELF image has a PT_INTERP header (is dynamically linked)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))


def test_the_wheel_holds_the_module_the_package_and_a_static_launcher(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for need in ("nodecell/__init__.py", "nodecell/__main__.py", "nodecell/_find_launcher.py",
                     "nodecell/_find_uv.py", "nodecell/_nodecell.pyi", "nodecell/py.typed",
                     "nodecell/bin/nodecell"):
            assert need in names, f"{need} is missing from {wheel.name}"
        assert any(re.fullmatch(r"nodecell/_nodecell\.abi3\.so", n) for n in names), sorted(names)
        info = z.getinfo("nodecell/bin/nodecell")
        assert (info.external_attr >> 16) & 0o111 == 0o111, "the launcher is not executable in the wheel"
        launcher = z.read("nodecell/bin/nodecell")
        assert not _elf_interpreter(launcher), "the launcher is dynamically linked (is libc6-dev installed?)"
        assert len(launcher) < 20 << 20, f"the launcher is {len(launcher) >> 20} MiB: not stripped?"
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(f"{dist}/METADATA").decode()
        entry_points = z.read(f"{dist}/entry_points.txt").decode()
    assert re.search(r"^Requires-Dist: uv\b", meta, re.M), "the wheel does not depend on uv"
    assert re.search(r"^nodecell\s*=\s*nodecell\.__main__:main$", entry_points, re.M), entry_points


def test_auditwheel_agrees_with_the_manylinux_tag(wheel):
    tag = re.search(r"-(manylinux_(\d+)_(\d+)_x86_64)\.whl$", wheel.name)
    assert tag, f"{wheel.name} has no manylinux tag"
    r = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    consistent = re.search(r'consistent\s+with\s+the\s+following\s+platform\s+tag:\s+"manylinux_(\d+)_(\d+)_x86_64"', out)
    assert consistent, out
    # The wheel may claim a newer glibc than it needs, never an older one.
    assert (int(tag.group(2)), int(tag.group(3))) >= (int(consistent.group(1)), int(consistent.group(2))), out
    # Only system-provided libraries (glibc, libgcc_s) may be referenced, nothing to graft in.
    assert "are required by the wheel" not in out, out


@pytest.fixture(scope="module")
def fresh_venv(wheel):
    """A venv made from Debian's python with the wheel and its dependencies from PyPI; world-readable
    (sandboxed workers never run as host uid 0)."""
    base = Path(tempfile.mkdtemp(prefix="nodecell-wheel-", dir="/var/tmp"))
    venv = base / "venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    yield venv
    shutil.rmtree(base, ignore_errors=True)


def _clean_env(**extra: str) -> dict:
    """A user's shell (TLS and proxy settings kept) without this checkout: no .venv on PATH, no
    VIRTUAL_ENV, no NODECELL_* or PYTHON* settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("NODECELL_")}
    env.update(PATH="/usr/bin:/bin", UV_PYTHON_DOWNLOADS="never")
    env.update(extra)
    return env


def test_the_command_line_runs_from_the_fresh_venv(fresh_venv):
    py = str(fresh_venv / "bin" / "python")
    r = subprocess.run([py, "-m", "nodecell", "--version"], capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0 and "nodecell" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(fresh_venv / "bin" / "nodecell"), "check", "--json"], capture_output=True, text=True,
                       env=_clean_env())
    assert r.stdout.strip(), r.stderr
    json.loads(r.stdout)
    # Both find the launcher inside the installed package and uv next to the venv's python.
    code = "import nodecell._find_launcher as l, nodecell._find_uv as u; print(l.find_launcher()); print(u.find_uv())"
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, env=_clean_env(), cwd="/")
    assert r.returncode == 0, r.stderr
    launcher, uv = r.stdout.split()
    assert launcher.startswith(str(fresh_venv)) and launcher.endswith("/nodecell/bin/nodecell"), launcher
    assert uv == str(fresh_venv / "bin" / "uv"), uv


def test_an_extension_with_a_dependency_runs_from_the_fresh_venv(fresh_venv, venv_root):
    """`pip install` of the wheel is all it takes: uv is found, the pack's venv is built with its own
    dependency, the worker runs sandboxed and answers."""
    work = Path(tempfile.mkdtemp(prefix="nodecell-wheel-app-", dir="/var/tmp"))
    try:
        (work / "wheelapp.py").write_text(textwrap.dedent("""
            import nodecell

            class WheelExt(nodecell.ExtensionBase):
                def dependency(self):
                    import six
                    return {"version": six.__version__, "file": six.__file__}
        """))
        pack = work / "packs" / "needs_six"
        pack.mkdir(parents=True)
        (pack / "__init__.py").write_text("import six\n")
        (pack / "manifest.yaml").write_text("name: needs_six\ndependencies:\n  - six==1.16.0\n")
        (work / "main.py").write_text(textwrap.dedent(f"""
            import asyncio, json, nodecell, wheelapp

            async def main():
                m = nodecell.ExtensionManager(wheelapp.WheelExt,
                                              nodecell.ExtensionManagerConfig(venv_root_path={str(venv_root)!r}))
                ext = await m.load_extension(nodecell.ExtensionConfig.from_manifest({str(pack)!r}))
                try:
                    print(json.dumps({{"dep": await ext.dependency(), "walls": ext.walls}}))
                finally:
                    await m.stop_all_extensions()

            asyncio.run(main())
        """))
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        os.chmod(work, 0o755)
        r = subprocess.run([str(fresh_venv / "bin" / "python"), str(work / "main.py")], capture_output=True,
                           text=True, env=_clean_env(), cwd=str(work), timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["dep"]["version"] == "1.16.0", out
        assert str(venv_root) in out["dep"]["file"], "six comes from the pack's own venv"
        walls = {w["name"]: w["state"] for w in out["walls"]}
        assert walls.get("user-namespace") == "active" and walls.get("landlock") == "active", walls
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sdist(out: Path) -> Path:
    """`maturin sdist` of this checkout into ``out``, unpacked there; returns the unpacked folder."""
    maturin = str(REPO / ".venv" / "bin" / "maturin")
    r = subprocess.run([maturin, "sdist", "-o", str(out / "sdist")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    sdist = next((out / "sdist").glob("nodecell-*.tar.gz"))
    (out / "src").mkdir()
    subprocess.run(["tar", "-xzf", str(sdist), "-C", str(out / "src")], check=True)
    return next((out / "src").iterdir())


def test_the_sdist_holds_what_the_wheel_is_built_from(wheel, tmp_path):
    """The fast half of the sdist check (about 5 s; `cargo xtask wheel-check` runs the slow half,
    test_the_sdist_builds_the_same_wheel, which compiles the sdist into a wheel): the sdist's metadata
    is the wheel's, its Python sources are the wheel's, its lock file is this checkout's, and every
    tracked file of each crate the extension and the launcher are built from
    (pyshim's build script builds the `nodecell` package's launcher) is in it."""
    src = _sdist(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
        for n in z.namelist():
            if n.endswith((".py", ".pyi", "py.typed")):
                copy = src / "pyshim" / "python" / n
                assert copy.is_file(), f"{n} of the wheel is not in the sdist"
                assert copy.read_bytes() == z.read(n), f"{n} differs: is the wheel in target/wheels stale?"
    assert (src / "PKG-INFO").read_bytes() == meta, "the sdist's PKG-INFO is not the wheel's METADATA"
    # --no-deps: the workspace's own manifests only (no registry access: on a new machine the
    # crates of the other lane's builds may not be downloaded yet); the lock file is compared below.
    r = subprocess.run(["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"], cwd=src,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    md = json.loads(r.stdout)
    by_path = {str(Path(p["manifest_path"]).parent): p for p in md["packages"]}
    by_name = {p["name"]: p for p in md["packages"]}
    need, todo = {}, [by_name["nodecell-pyshim"], by_name["nodecell"]]
    while todo:
        pkg = todo.pop()
        if pkg["name"] in need:
            continue
        need[pkg["name"]] = pkg
        for d in pkg["dependencies"]:
            if d.get("path"):
                assert d["path"] in by_path, f"{pkg['name']} needs {d['path']}, not a crate of the sdist"
                todo.append(by_path[d["path"]])
    assert set(need) >= {"nodecell", "nodecell-pyshim", "nodecell-sandbox", "nodecell-ipc"}, sorted(need)
    root = Path(md["workspace_root"])
    for name, pkg in need.items():
        crate = Path(pkg["manifest_path"]).parent.relative_to(root)
        tracked = subprocess.run(["git", "ls-files", "-z", "--", str(crate)], cwd=REPO, capture_output=True,
                                 check=True).stdout.decode().split("\0")
        # the root package's folder is the whole repository: its sources are src/ and its manifest
        tracked = [t for t in tracked if t and (str(crate) != "." or t.startswith("src/") or "/" not in t)]
        missing = [t for t in tracked if not (src / t).exists()]
        assert not missing, f"{name}: tracked files missing from the sdist: {missing[:20]}"
    assert (src / "Cargo.lock").read_bytes() == (REPO / "Cargo.lock").read_bytes(), "the sdist's Cargo.lock differs"
    for f in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "pyshim/build.rs"):
        assert (src / f).is_file(), f"{f} is missing from the sdist"


@pytest.mark.xtask
def test_the_sdist_builds_the_same_wheel(wheel, tmp_path):
    """`maturin sdist` carries everything the launcher is built from; `pip wheel` of it gives the same
    files (the binaries are rebuilt, so only their presence is compared) and the same Python sources.

    The sdist's files are all touched after unpacking, so its own sources are compiled (and its build
    script builds the launcher) while registry crates come from this checkout's target folder.
    About 150 s on 2 cores: `cargo xtask wheel-check` runs it (scripts/test.sh leaves it out:
    test_the_sdist_holds_what_the_wheel_is_built_from is its fast half)."""
    src = _sdist(tmp_path)
    for root, _, files in os.walk(src):
        for f in files:
            os.utime(os.path.join(root, f))
    env = dict(os.environ, CARGO_TARGET_DIR=str(REPO / "target"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                        "-w", str(tmp_path / "out"), str(src)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rebuilt = next((tmp_path / "out").glob("nodecell-*.whl"))
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(rebuilt) as b:
        names_a = {n for n in a.namelist() if ".dist-info/" not in n}
        names_b = {n for n in b.namelist() if ".dist-info/" not in n}
        assert names_a == names_b, (names_a ^ names_b)
        for n in names_a:
            if n.endswith(".py") or n.endswith(".pyi"):
                assert a.read(n) == b.read(n), f"{n} differs: is the wheel in target/wheels stale?"
        meta = [next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")) for z in (a, b)]
        assert a.read(meta[0]) == b.read(meta[1])
        entry = [next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")) for z in (a, b)]
        assert a.read(entry[0]) == b.read(entry[1])
        assert not _elf_interpreter(b.read("nodecell/bin/nodecell")), "the sdist's launcher is not static"
