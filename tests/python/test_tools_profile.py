"""Profiles across host and cells: the trace file validates against a Trace Event Format
schema (trace_event.schema.json, written from the format's spec) and has spans from both
sides on one clock; NODECELL_PROFILE, `nodecell profile` on a running host, and the
per-node summary of a Studio workflow run."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tools_support import Host, env_with, host_argv, launcher, tools_dir

# The fixtures studio_files and studio_venv_root.
pytest_plugins = ["studio_fixtures"]

SCHEMA = json.loads((Path(__file__).parent / "trace_event.schema.json").read_text())


def check_trace(path: str) -> dict:
    """Load a trace, validate it, and check it carries spans from the host and a worker."""
    with open(path) as f:
        doc = json.load(f)
    jsonschema.validate(doc, SCHEMA)
    return doc


def by_pid(doc: dict) -> dict:
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    return names


def test_schema_refuses_what_the_format_forbids():
    ok = {"traceEvents": [{"ph": "X", "name": "a", "ts": 1.5, "dur": 2, "pid": 1, "tid": 1}]}
    jsonschema.validate(ok, SCHEMA)
    for bad in (
        {"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "pid": 1, "tid": 1}]},  # X without dur
        {"traceEvents": [{"ph": "Q", "name": "a", "ts": 1, "pid": 1, "tid": 1}]},  # no such phase
        {"traceEvents": [{"ph": "s", "cat": "c", "name": "a", "ts": 1, "pid": 1, "tid": 1}]},  # flow without id
        {"traceEvents": [{"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {}}]},  # no name
        {"traceEvents": [{"ph": "B", "name": "a", "pid": 1, "tid": 1}]},  # no ts
        {"events": []},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


@pytest.fixture(scope="module")
def host(support_dir, venv_root):
    tools = tools_dir()
    h = Host(support_dir, venv_root, tools)
    h.tools = tools
    yield h
    h.close()


def test_profile_spans_from_both_sides(host, tmp_path):
    out = str(tmp_path / "calls.json")
    host.send(f"profile {out}")
    host.expect("PROFILING")
    for i in range(20):
        assert host.call(f"add {i} 1") == f"RESULT add {2 * (i + 1)}"
    assert host.call("busy 0.05").startswith("RESULT busy")
    assert host.call("crash_not_a_function").startswith("ERROR")
    host.send("endprofile")
    assert host.expect("PROFILE") == f"PROFILE {out}"
    doc = check_trace(out)
    ev = doc["traceEvents"]
    names = by_pid(doc)
    assert names[host.pid] == f"host {host.pid}"
    workers = [p for p, n in names.items() if n.startswith("pack dbgpack worker #")]
    assert len(workers) == 1 and workers[0] != host.pid
    wpid = workers[0]
    with open(f"/proc/{wpid}/cmdline", "rb") as f:  # the worker's real pid, as the host sees it
        assert b"python" in f.read()
    calls = [e for e in ev if e["ph"] == "X" and e["cat"] == "call"]
    served = [e for e in ev if e["ph"] == "X" and e["cat"] == "worker"]
    assert len(calls) == 22 and all(e["pid"] == host.pid and e["name"] == "run" for e in calls)
    assert len(served) == 22 and all(e["pid"] == wpid for e in served)
    assert sum(1 for e in calls if e["args"].get("failed")) == 1
    host_phases = {e["name"] for e in ev if e["ph"] == "X" and e["cat"] == "phase" and e["pid"] == host.pid}
    worker_phases = {e["name"] for e in ev if e["ph"] == "X" and e["cat"] == "phase" and e["pid"] == wpid}
    assert {"queue", "encode", "wait", "decode", "resume"} <= host_phases, host_phases
    assert {"decode", "execute", "encode"} <= worker_phases, worker_phases
    # One clock: each call's worker span lies inside the host's span of the same call.
    by_call = {e["args"]["call_id"]: e for e in calls}
    for w in served:
        h = by_call[w["args"]["call_id"]]
        assert h["ts"] <= w["ts"] and w["ts"] + w["dur"] <= h["ts"] + h["dur"] + 1, (h, w)
    busy = [e for e in ev if e["ph"] == "X" and e["name"] == "execute" and e["pid"] == wpid and e["dur"] >= 50_000]
    assert len(busy) == 1
    # Flow arrows pair up across the processes.
    starts = {e["id"]: e for e in ev if e["ph"] == "s"}
    ends = {e["id"]: e for e in ev if e["ph"] == "f"}
    assert set(starts) == set(ends) and len(starts) >= 40
    assert any(starts[i]["pid"] == host.pid and ends[i]["pid"] == wpid for i in starts)


def test_nodecell_profile_records_a_running_host(host, tmp_path):
    out = tmp_path / "cli.json"
    host.send("loop add 2 3")
    host.expect("LOOPING")
    try:
        r = subprocess.run([launcher(), "profile", "--pid", str(host.pid), "--seconds", "1.5", "-o", str(out)],
                           env=env_with(host.tools), capture_output=True, text=True, timeout=120)
    finally:
        host.send("stop")
        host.expect("STOPPED")
    assert r.returncode == 0, r.stderr
    assert f"written to {out}" in r.stdout
    doc = check_trace(str(out))
    served = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "worker"]
    assert len(served) > 10
    r = subprocess.run([launcher(), "profile", "--pid", str(host.pid), "--stop"], env=env_with(host.tools),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no profile is being recorded" in r.stderr


def test_env_var_profiles_a_host_until_it_stops(support_dir, venv_root, tmp_path):
    out = tmp_path / "env.json"
    r = subprocess.run(host_argv(support_dir, venv_root, "--calls", "add:1,2", "add:3,4", "busy:0.02"),
                       env=env_with(tools_dir(), NODECELL_PROFILE=str(out)), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"profile written to {out}" in r.stderr
    doc = check_trace(str(out))
    served = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "worker"]
    assert len(served) == 3  # the last records were drained when the manager stopped


def test_studio_workflow_summary_per_node(aloop, studio_files, studio_venv_root, tmp_path):
    from nodecell import studio, tools

    out = str(tmp_path / "workflow.json")
    graph = {
        "1": {"class_type": "MakeImage", "inputs": {"width": 64, "height": 48, "seed": 1}},
        "2": {"class_type": "Invert", "inputs": {"image": ["1", 0], "threshold": 0.5}},
        "3": {"class_type": "Brighten", "inputs": {"image": ["2", 0], "amount": 0.1}},
    }

    async def go():
        host = studio.StudioHost(str(studio_venv_root))
        mappings: dict = {}
        try:
            for p in ("classic_pack", "v3_pack"):
                await host.load_custom_node(str(studio_files / "packs" / p), mappings, {})
            await tools.start_profile_async(out)
            result = await studio.run_workflow(graph, mappings)
            path = await tools.stop_profile_async()
            plain = await studio.run_workflow(graph, mappings)
            return result, path, plain
        finally:
            await host.stop()

    result, path, plain = aloop.run(go())
    assert plain.ok and plain.profile is None  # no profile, no summary
    assert result.ok, result.errors
    assert path == out
    rows = {r["node"]: r for r in result.profile}
    assert set(rows) == {"1", "2", "3"}
    assert rows["1"]["pack"] == "classic_pack" and rows["3"]["pack"] == "v3_pack"
    for r in rows.values():
        assert r["calls"] >= 1 and r["runs"] == 1
        assert r["execute_ms"] > 0 and r["wall_ms"] >= r["execute_ms"], r
        assert r["transfer_ms"] >= 0 and r["encode_ms"] > 0
    doc = check_trace(out)
    assert doc["otherData"]["node_summary"] == result.profile
    nodes = [e for e in doc["traceEvents"] if e.get("cat") == "node"]
    assert sorted(e["ph"] for e in nodes) == ["b"] * 3 + ["e"] * 3
    packs = {n for n in by_pid(doc).values() if n.startswith("pack ")}
    assert {"pack classic_pack worker #1", "pack v3_pack worker #1"} <= packs, packs
