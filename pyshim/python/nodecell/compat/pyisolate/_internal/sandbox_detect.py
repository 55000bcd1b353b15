"""``detect_sandbox_capability()``: whether this kernel and user can give the sandbox.

pyisolate asks bubblewrap; nodecell asks its own launcher (``nodecell check``), which
probes every wall it sets up itself (namespaces, Landlock, seccomp...).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Optional

__all__ = ["RestrictionModel", "SandboxCapability", "detect_sandbox_capability"]


class RestrictionModel(enum.Enum):
    """What keeps the sandbox from starting (pyisolate's values)."""

    NONE = "none"
    RHEL_SYSCTL = "rhel_sysctl"
    UBUNTU_APPARMOR = "ubuntu_apparmor"
    SELINUX = "selinux"
    ARCH_HARDENED = "arch_hardened"
    PLATFORM_UNSUPPORTED = "platform"
    BWRAP_MISSING = "bwrap_missing"
    UNKNOWN = "unknown"


@dataclasses.dataclass
class SandboxCapability:
    """The answer: ``available``; ``bwrap_path`` is nodecell's launcher here."""

    available: bool
    bwrap_path: Optional[str]
    restriction_model: RestrictionModel
    remediation: str
    raw_error: Optional[str] = None


def _classify(detail: str) -> RestrictionModel:
    d = detail.lower()
    if "apparmor" in d:
        return RestrictionModel.UBUNTU_APPARMOR
    if "max_user_namespaces" in d:
        return RestrictionModel.RHEL_SYSCTL
    if "selinux" in d:
        return RestrictionModel.SELINUX
    return RestrictionModel.UNKNOWN


@functools.lru_cache(maxsize=1)
def detect_sandbox_capability() -> SandboxCapability:
    """Run ``nodecell check`` once: available when every wall of nodecell's default
    policy works here; otherwise names the missing ones."""
    import sys

    from .... import check
    from ...._find_launcher import find_launcher

    if not sys.platform.startswith("linux"):
        return SandboxCapability(False, None, RestrictionModel.PLATFORM_UNSUPPORTED,
                                 "nodecell's sandbox needs Linux")
    try:
        launcher = find_launcher()
        report = check()
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return SandboxCapability(False, None, RestrictionModel.BWRAP_MISSING,
                                 "reinstall nodecell: its launcher is missing or broken", str(e))
    missing = [w for w in report.get("sandbox", []) if w.get("default_wall") and not w.get("available")]
    if not missing:
        return SandboxCapability(True, launcher, RestrictionModel.NONE, "")
    detail = "; ".join(f"{w.get('name')}: {w.get('detail', '')}" for w in missing)
    return SandboxCapability(False, launcher, _classify(detail),
                             "run `nodecell check` for what is missing and how to enable it", detail)
