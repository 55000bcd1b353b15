"""The skip policy (skip_policy.py) against a real pytest run: an unjustified skip,
at collection or in a test, fails the run and is named; a listed skip stays a skip."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_unjustified_skips_fail_and_listed_ones_stay_skips(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_needs_a_module.py").write_text(
        "import pytest\npytest.importorskip('no_such_module_here')\n\ndef test_x():\n    pass\n")
    (tmp_path / "test_cuda.py").write_text(
        "import pytest\n\n"
        "def test_listed():\n    pytest.skip('no CUDA device here: not run')\n\n"
        "def test_unlisted_in_a_listed_file():\n    pytest.skip('needs root')\n\n"
        "@pytest.mark.xfail(reason='known')\ndef test_xfail_is_not_a_skip():\n    assert False\n\n"
        "def test_passes():\n    pass\n")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
         "--continue-on-collection-errors", "--rootdir",
         str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env={"PYTHONPATH": str(HERE), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    # pytest's closing line ends its stdout (plugins such as pytest-asyncio may warn on stderr).
    closing = r.stdout.strip().splitlines()[-1]
    assert "1 failed" in closing and "1 error" in closing, closing
    assert "1 passed" in closing and "1 skipped" in closing and "1 xfailed" in closing, closing
    assert "skipped (needs root), and this skip is not on the allowed list" in out, out
    assert "skipped (could not import 'no_such_module_here'" in out, out
    assert "SKIPPED [1] test_cuda.py:4: no CUDA device here: not run" in out, out
