"""The skip policy of the Python tests (a pytest plugin; conftest.py loads it).

A test that cannot run here fails: a skip counts as a pass in pytest's closing
line, so a missing torch, mypy, root or kernel feature would otherwise let a
broken suite look green. The only skips kept are the ones in ``ALLOWED``:
each names the test file, the start of the reason, and why the skip is
justified. Every other skip, at collection (``pytest.importorskip`` at module
level) or in a test, is reported as a failure that quotes its reason, so the
closing line and the exit status both say so.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import pytest

# (test file name, reason prefix) -> why this skip is justified.
ALLOWED: Dict[Tuple[str, str], str] = {
    ("test_cuda.py", "no CUDA device"): "CUDA tests need a device; machines without one cannot run them",
    ("test_cuda.py", "a CUDA device is present"):
        "the refusal without a device cannot be reached on a machine with one",
}


def skip_reason(longrepr: Any) -> str:
    """The reason text of a skipped report (``Skipped: `` removed)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text[len("Skipped: "):] if text.startswith("Skipped: ") else text


def allowed(file_name: str, reason: str) -> Optional[str]:
    """The justification when this skip is on the list, else None."""
    for (name, prefix), why in ALLOWED.items():
        if file_name == name and reason.startswith(prefix):
            return why
    return None


def _refuse(rep: Any, file_name: str) -> None:
    reason = skip_reason(rep.longrepr)
    if allowed(file_name, reason) is None:
        rep.outcome = "failed"
        rep.longrepr = (
            f"skipped ({reason}), and this skip is not on the allowed list in "
            f"tests/python/skip_policy.py: a test that cannot run here fails"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:  # type: ignore[type-arg]
    """Turn a test's unjustified skip into a failure."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail"):
        _refuse(rep, item.path.name)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Turn a module's unjustified skip (``importorskip`` at import) into a collection error."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped:
        _refuse(rep, collector.path.name)
