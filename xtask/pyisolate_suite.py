"""Runs pyisolate 0.10.2's own tests that use only its public API, plus its
integration tests through its test host, against nodecell's pyisolate layer.

    python xtask/pyisolate_suite.py --src /path/to/pyisolate-src [--json OUT] [--list]

``--src`` is pyisolate's source tree (PyPI sdist == GitHub Comfy-Org/pyisolate
@333b8bc). Its tests run in place, unmodified, under
``python -m nodecell.compat exec``: ``import pyisolate`` in pytest, in every
subprocess a test starts and in every worker resolves to nodecell.compat.pyisolate,
never to the pyisolate package in the tree. Nothing is written into the tree
(no bytecode, no pytest cache).

Groups (each test pyisolate's suite has is in exactly one, see SELECTION/EXCLUDED):

* ``public``: imports only pyisolate's public modules (``pyisolate``,
  ``.config``, ``.host``, ``.interfaces``, ``.shared``, ``.sealed``,
  ``.path_helpers``), the names they re-export, and the event bridge behind
  ``emit_event``/``register_event_handler``;
* ``semantics``: public behaviour reached through the ``_internal`` names that
  applications import (ProxiedSingleton/SingletonMetaclass in ``rpc_protocol``,
  ``singleton_context``, ``serialization_registry``, ``remote_handle``, name and
  dependency validation): the issue lists each of these behaviours;
* ``integration``: real extensions through pyisolate's test host (``tests/harness``).

Everything else tests pyisolate's internals (its bubblewrap command line, JSON
transport, queue-based RPC engine, conda/pixi/uv provisioning, bootstrap) and
is not run. CUDA tests are excepted when no CUDA device exists (their skip says
so); any other skip counts as a failure. Exit status 0 when public and integration
each pass at least 95% of what they ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Tuple

# (group, pytest node or file, why)
SELECTION: List[Tuple[str, str, str]] = [
    ("public", "tests/test_config_validation.py", "ExtensionConfig / ExtensionManagerConfig / ProxiedSingleton"),
    ("public", "tests/test_extension_lifecycle.py", "ExtensionConfig contract"),
    ("public", "tests/test_host_public.py", "pyisolate.host.ExtensionManager and its handle"),
    ("public", "tests/test_path_helpers_contract.py", "pyisolate.path_helpers"),
    ("public", "tests/path_unification/test_path_helpers.py", "pyisolate.path_helpers"),
    ("public", "tests/test_event_channel.py", "emit_event / register_event_handler, SealedNodeExtension"),
    ("public", "tests/test_torch_optional_contract.py", "import pyisolate without torch; tensor serializer"),
    ("semantics", "tests/test_singleton_lifecycle.py", "singleton_scope, use_remote, _register, inject_instance"),
    ("semantics", "tests/test_singleton_shared.py", "SingletonMetaclass, local_execution, nested singletons"),
    ("semantics", "tests/test_rpc_contract.py", "ProxiedSingleton contract across event loops"),
    ("semantics", "tests/test_adapter_contract.py", "IsolationAdapter protocol, SerializerRegistry"),
    ("semantics", "tests/test_serialization_registry.py", "SerializerRegistryProtocol"),
    ("semantics", "tests/test_serialization_contract.py", "serializer round trips"),
    ("semantics", "tests/test_sealed_ndarray.py", "SealedNodeExtension"),
    ("semantics", "tests/test_sealed_proxy_handle.py", "SealedNodeExtension handles"),
    ("semantics", "tests/test_remote_handle.py", "RemoteObjectHandle"),
    ("semantics", "tests/test_security.py", "extension name normalization, dependency validation"),
    ("semantics", "tests/test_extension_safety.py", "name normalization, dependency and path validation"),
    ("semantics", "tests/test_host_integration.py", "build_extension_snapshot with an adapter"),
    ("semantics", "tests/test_memory_leaks.py::TestProxyGarbageCollection", "singletons are collectable"),
    ("semantics", "tests/test_memory_leaks.py::TestRegistryCleanup", "singleton registry"),
    ("semantics", "tests/test_memory_leaks.py::TestMemoryLeakScenarios", "singleton registry"),
    ("integration", "tests/integration_v2", "extensions through tests/harness/host.py"),
    ("integration", "tests/test_harness_host_env.py", "the test host itself"),
]

EXCLUDED: List[Tuple[str, str]] = [
    ("tests/test_bootstrap.py", "child bootstrap internals (snapshot env parsing)"),
    ("tests/test_bootstrap_additional.py", "child bootstrap internals"),
    ("tests/test_fail_loud.py", "child bootstrap internals"),
    ("tests/test_bwrap_command.py", "pyisolate's bubblewrap command line"),
    ("tests/test_sandbox_detect.py", "bubblewrap probing"),
    ("tests/test_client_entrypoint_extra.py", "pyisolate's child entry point"),
    ("tests/test_exact_proxy_bootstrap.py", "pyisolate's child entry point"),
    ("tests/test_conda_integration.py", "conda backend (refused by nodecell)"),
    ("tests/test_conda_sealed_worker_contract.py", "conda backend"),
    ("tests/test_config_conda.py", "conda backend validation internals"),
    ("tests/test_environment_conda.py", "conda/pixi provisioning"),
    ("tests/test_pixi_provisioner.py", "pixi provisioning"),
    ("tests/test_security_conda.py", "conda backend"),
    ("tests/test_host_conda_dispatch.py", "conda backend dispatch"),
    ("tests/test_config_sealed_worker.py", "validate_backend_config internals"),
    ("tests/test_environment_sealed_worker.py", "uv install command internals"),
    ("tests/test_host_sealed_worker_dispatch.py", "launch internals (mocked Popen/bwrap)"),
    ("tests/test_security_sealed_worker.py", "bubblewrap command line"),
    ("tests/test_uv_sealed_integration.py", "pip-installs pyisolate from a custom index, asserts bwrap argv"),
    ("tests/test_cuda_wheels.py", "CUDA wheel index scraping internals"),
    ("tests/test_host_internal_ext.py", "Extension internals (mocked launch, JSON transport)"),
    ("tests/test_rpc_message_format.py", "JSON-RPC message internals"),
    ("tests/test_rpc_shutdown.py", "queue-based AsyncRPC internals"),
    ("tests/test_rpc_transports.py", "JSON socket transport"),
    ("tests/test_model_serialization.py", "serialization internals"),
    ("tests/test_tensor_serializer_signal_cleanup.py", "/dev/shm tensor keeper signals"),
    ("tests/test_tensor_value_json.py", "JSON tensor internals"),
    ("tests/test_torch_utils_additional.py", "torch utility internals"),
    ("tests/test_memory_leaks.py::TestTensorKeeperCleanup", "the /dev/shm TensorKeeper"),
    ("tests/test_shared_additional.py", "imports rpc_serialization internals (its two singleton tests are "
     "covered by test_singleton_lifecycle/shared)"),
]

CUDA_SKIP = ("cuda not available", "no cuda", "cuda is not available")


def _group_of(nodeid: str) -> str:
    best = ("", "")
    for group, target, _why in SELECTION:
        if nodeid == target or nodeid.startswith(target + "::") or nodeid.startswith(target + "/"):
            if len(target) > len(best[1]):
                best = (group, target)
    return best[0] or "?"


def _nodeid(case: ET.Element) -> str:
    cls = case.get("classname", "")
    name = case.get("name", "")
    file = case.get("file")
    parts = cls.split(".")
    # junit classname: "tests.test_x.TestClass" (file path dotted) + name
    if file:
        mod = file
        rest = parts[len(file[:-3].split("/")):] if file.endswith(".py") else []
    else:
        i = 0
        while i < len(parts) and not parts[i][:1].isupper():
            i += 1
        mod = "/".join(parts[:i]) + ".py"
        rest = parts[i:]
    return "::".join([mod] + rest + [name])


def run(src: str, pytest_timeout: int) -> Tuple[List[Dict[str, str]], float, int]:
    xml = tempfile.NamedTemporaryFile(prefix="pyisolate-suite-", suffix=".xml", delete=False).name
    targets = [t for _g, t, _w in SELECTION]
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "nodecell.compat", "exec", "--", sys.executable, "-m", "pytest",
           "-p", "no:cacheprovider", "-o", "addopts=", "-o", "asyncio_default_fixture_loop_scope=function",
           "-q", "-rfEs", "--tb=short", "-o", "junit_family=xunit1", f"--junitxml={xml}",
           f"--timeout={pytest_timeout}", *targets]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=src, env=env, check=False)
    took = time.monotonic() - t0
    results: List[Dict[str, str]] = []
    try:
        tree = ET.parse(xml)
    except (OSError, ET.ParseError) as e:
        raise SystemExit(f"pytest wrote no report ({e}); exit status {proc.returncode}")
    finally:
        try:
            os.unlink(xml)
        except OSError:
            pass
    for case in tree.iter("testcase"):
        nodeid = _nodeid(case)
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                detail = (child.get("message") or "").strip().splitlines()[0:1]
                detail = detail[0] if detail else ""
            elif child.tag == "skipped":
                msg = (child.get("message") or "").strip()
                outcome = "cuda-excepted" if any(s in msg.lower() for s in CUDA_SKIP) else "skipped"
                detail = msg
        results.append({"test": nodeid, "group": _group_of(nodeid), "outcome": outcome, "detail": detail[:300]})
    return results, took, proc.returncode


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="pyisolate 0.10.2's source tree")
    p.add_argument("--json", help="write the per-test results here")
    p.add_argument("--list", action="store_true", help="print the selection and the exclusions, run nothing")
    p.add_argument("--timeout", type=int, default=300, help="per-test timeout in seconds")
    a = p.parse_args(argv)
    if a.list:
        for group, target, why in SELECTION:
            print(f"{group:12} {target}  ({why})")
        for target, why in EXCLUDED:
            print(f"{'excluded':12} {target}  ({why})")
        return 0
    src = os.path.abspath(a.src)
    if not os.path.isfile(os.path.join(src, "tests", "harness", "host.py")):
        raise SystemExit(f"{src} does not look like pyisolate's source tree (no tests/harness/host.py)")
    results, took, status = run(src, a.timeout)
    width = max((len(r["test"]) for r in results), default=10)
    for r in sorted(results, key=lambda r: (r["group"], r["test"])):
        line = f"{r['outcome'].upper():14} {r['group']:12} {r['test']:{width}}"
        if r["outcome"] not in ("passed",) and r["detail"]:
            line += f"  -- {r['detail']}"
        print(line)
    print()
    ok = True
    summary = {}
    for group in ("public", "semantics", "integration"):
        rs = [r for r in results if r["group"] == group]
        ran = [r for r in rs if r["outcome"] != "cuda-excepted"]
        passed = sum(1 for r in ran if r["outcome"] == "passed")
        rate = passed / len(ran) if ran else 0.0
        summary[group] = {"passed": passed, "ran": len(ran), "cuda_excepted": len(rs) - len(ran), "rate": rate}
        print(f"{group:12} {passed}/{len(ran)} passed ({rate:.1%}), {len(rs) - len(ran)} CUDA tests excepted")
        if group in ("public", "integration") and rate < 0.95:
            ok = False
    allran = [r for r in results if r["outcome"] != "cuda-excepted"]
    allpass = sum(1 for r in allran if r["outcome"] == "passed")
    print(f"{'all':12} {allpass}/{len(allran)} passed; pytest took {took:.0f} s (exit status {status})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "summary": summary, "seconds": took}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
