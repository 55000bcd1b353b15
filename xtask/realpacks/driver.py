"""One side of `cargo xtask realpacks`: a real app process loading real packs, directly or isolated.

    <app venv>/bin/python driver.py --app DIR --mode direct|isolated --out FILE PACK_DIR...

Starts the app the way its own ``main.py`` does (its modules, its nodes, its
``PromptServer`` on a local port), loads each pack (``direct``: the app's own
``nodes.load_custom_node``; ``isolated``: ``nodecell.studio.StudioHost().load_custom_node``
into the app's ``NODE_CLASS_MAPPINGS`` with no other glue), then records for
each pack: load time and errors, ``/object_info`` of its nodes (over HTTP,
from the app's server), the answers of its GET routes without parameters
(over HTTP), and the outputs of every node whose inputs can be made up
(widgets with their defaults, images, masks and latents from seeded helper
nodes) executed through the app's own ``PromptExecutor`` after its own
``validate_prompt``. The comparison and the table are the xtask's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import sys
import threading
import time
import traceback
import urllib.request
from typing import Any, Dict, Optional, Tuple

#: Seconds one node may run (validation + execution), the same on both sides (``--node-timeout``).
NODE_TIMEOUT = 60.0
HERE = os.path.dirname(os.path.realpath(__file__))
#: Isolated side: how long past its call deadline the driver still waits for a node's thread
#: (the runtime fails the call at the deadline and restarts the worker at the next call).
ISOLATED_GRACE = 240.0
ROUTE_TIMEOUT = 20.0


def digest(v: Any, depth: int = 0) -> Any:
    """A comparable fingerprint of a node output (tensors by dtype, shape and bytes)."""
    if depth > 20:
        return "<deep>"
    mods = sys.modules
    torch = mods.get("torch")
    np = mods.get("numpy")
    if torch is not None and isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return ["tensor", str(t.dtype), list(t.shape), hashlib.sha256(raw).hexdigest()[:16]]
    if np is not None and isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        return ["ndarray", str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()[:16]]
    if isinstance(v, dict):
        return {str(k): digest(x, depth + 1) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [digest(x, depth + 1) for x in v]
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, float):
        return repr(v)
    name = type(v).__name__
    if name in ("RemoteObject", "RemoteCallable"):
        return ["object"]  # a handle: the host holds the object
    return ["object"]


def synth_inputs(info: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(inputs, helper nodes) for a node from its /object_info, or None when an input cannot be made up."""
    inputs: Dict[str, Any] = {}
    helpers: Dict[str, Any] = {}
    req = (info.get("input") or {}).get("required") or {}
    for name, spec in req.items():
        if not isinstance(spec, (list, tuple)) or not spec:
            return None
        kind = spec[0]
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if isinstance(kind, list):
            if not kind:
                return None
            inputs[name] = opts.get("default", kind[0]) if opts.get("default") in kind else kind[0]
        elif kind == "COMBO":
            options = opts.get("options") or []
            if not options:
                return None
            inputs[name] = opts.get("default", options[0]) if opts.get("default") in options else options[0]
        elif kind in ("INT", "FLOAT"):
            d = opts.get("default", opts.get("min", 0))
            inputs[name] = d if d is not None else 0
        elif kind == "BOOLEAN":
            inputs[name] = bool(opts.get("default", False))
        elif kind == "STRING":
            inputs[name] = opts.get("default", "") or ""
        elif kind in ("IMAGE", "MASK", "LATENT"):
            hid = f"nc_{kind.lower()}"
            helpers[hid] = {"class_type": f"NCTest{kind.title()}", "inputs": {"seed": 7}}
            inputs[name] = [hid, 0]
        else:
            return None
    return inputs, helpers


def helper_nodes() -> Dict[str, Any]:
    import torch

    class NCTestImage:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"seed": ("INT", {"default": 7})}}

        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "run"
        CATEGORY = "nodecell/test"

        def run(self, seed):
            g = torch.Generator().manual_seed(seed)
            return (torch.rand(1, 64, 80, 3, generator=g),)

    class NCTestMask(NCTestImage):
        RETURN_TYPES = ("MASK",)

        def run(self, seed):
            g = torch.Generator().manual_seed(seed + 1)
            return ((torch.rand(1, 64, 80, generator=g) > 0.5).float(),)

    class NCTestLatent(NCTestImage):
        RETURN_TYPES = ("LATENT",)

        def run(self, seed):
            g = torch.Generator().manual_seed(seed + 2)
            return ({"samples": torch.randn(1, 4, 8, 10, generator=g)},)

    class NCSink:
        """An output node taking anything: the app's validation wants one in every prompt."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("*", {})}}

        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True
        CATEGORY = "nodecell/test"

        def run(self, value):
            return {}

    return {"NCTestImage": NCTestImage, "NCTestMask": NCTestMask, "NCTestLatent": NCTestLatent, "NCSink": NCSink}


def http(port: int, path: str, timeout: float) -> Tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--app", required=True)
    ap.add_argument("--mode", choices=["direct", "isolated"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, default=8190)
    ap.add_argument("--venv-root", default=None)
    ap.add_argument("--state", default=None)
    ap.add_argument("--no-outputs", action="store_true", help="load, /object_info and routes only")
    ap.add_argument("--node-timeout", type=float, default=NODE_TIMEOUT,
                    help="seconds one node may run, both sides (isolated: the packs' per-call timeout)")
    ap.add_argument("--app-cell", action="store_true", help="isolated: StudioHost(app_cell=True)")
    ap.add_argument("--app-preload", default="nodes,server",
                    help="with --app-cell: the app's modules the app cell's zygote imports (comma-separated)")
    ap.add_argument("--no-prestart", action="store_true",
                    help="with --app-cell: start the app cell with the first pack, not from a prestartup script")
    ap.add_argument("packs", nargs="+")
    a = ap.parse_args()

    app = os.path.realpath(a.app)
    work = os.path.realpath(a.work)
    for sub in ("output", "temp", "input", "user"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    sys.argv = ["main.py", "--cpu", "--disable-auto-launch", "--port", str(a.port), "--listen", "127.0.0.1",
                "--output-directory", os.path.join(work, "output"), "--temp-directory", work,
                "--input-directory", os.path.join(work, "input"), "--user-directory", os.path.join(work, "user"),
                "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
    os.chdir(app)
    sys.path.insert(0, app)
    t_boot = time.perf_counter()
    boot_at = time.time()
    preload = [m for m in a.app_preload.split(",") if m] if a.app_cell else []
    prestart = a.mode == "isolated" and a.app_cell and not a.no_prestart
    # What main.py does first (its command line, then its folders), so that its prestartup step
    # below finds the driver's folders.
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths

    # main.py applies --temp-directory only when run as a script: set it here, so neither
    # side writes into (or opens up) the app checkout's own temp folder.
    folder_paths.set_temp_directory(os.path.join(work, "temp"))
    host_args: Dict[str, Any] = {"venv_root_path": a.venv_root, "state": a.state, "app_preload": preload}
    if prestart:
        # A folder of custom nodes holding only the driver's prestartup script: main.py runs it
        # where it runs every custom node's, before it imports torch and its modules.
        folder_paths.add_model_folder_path("custom_nodes", os.path.join(HERE, "prestart"))
        os.environ["NODECELL_REALPACKS_PRESTART"] = json.dumps(
            dict(host_args, packs_dir=os.path.dirname(os.path.realpath(a.packs[0])),
                 packs=[os.path.realpath(p) for p in a.packs]))
    import main as app_main  # the app's own start-up (logging, prestartup, args)

    import execution
    import nodes
    import server

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    boot_s = time.perf_counter() - t_boot
    if prestart:
        folder_paths.folder_names_and_paths["custom_nodes"][0].remove(os.path.join(HERE, "prestart"))
    base = set(nodes.NODE_CLASS_MAPPINGS)
    from aiohttp import web

    result: Dict[str, Any] = {"mode": a.mode, "boot_s": boot_s, "packs": {}}
    host = None
    if a.mode == "isolated":
        from nodecell import studio

        if prestart and studio.prestarted() is not None:
            # The host the prestartup script made (the same arguments: the same host).
            host = studio.prestart(**json.loads(os.environ["NODECELL_REALPACKS_PRESTART"]))
            result["prestart"] = {"at_s": float(os.environ["NODECELL_REALPACKS_PRESTART_AT"]) - boot_at,
                                  "took_s": float(os.environ["NODECELL_REALPACKS_PRESTART_S"])}
        else:
            if prestart:
                result["prestart"] = {"error": "the prestartup script did not run (see the log)"}
            host = studio.StudioHost(a.venv_root, state=a.state, app_cell=a.app_cell, app_preload=preload)
        result["app_profile"] = host.profile.name if host.profile else None
        result["app_cell"] = a.app_cell
        # Install the packs' venvs first (a one-time install step, as pip installing a pack's
        # requirements is for the direct side): load times then measure the load alone.
        t0 = time.perf_counter()
        try:
            loop.run_until_complete(host.provision([os.path.realpath(p) for p in a.packs]))
        except Exception as e:  # noqa: BLE001 - the pack's load reports it again
            print(f"provisioning failed: {type(e).__name__}: {e}", flush=True)
        result["provision_s"] = time.perf_counter() - t0
    result["node_timeout"] = a.node_timeout
    if host is not None and "prestart" in result:
        result["prestart"]["kinds"] = host.kinds
    for pack_dir in a.packs:
        pack_dir = os.path.realpath(pack_dir)
        name = os.path.basename(pack_dir)
        before_nodes = set(nodes.NODE_CLASS_MAPPINGS)
        before_routes = {(r.method, r.path) for r in srv.routes if isinstance(r, web.RouteDef)}
        rec: Dict[str, Any] = {"loaded": False, "error": None}
        t0 = time.perf_counter()
        try:
            if a.mode == "direct":
                ok = loop.run_until_complete(nodes.load_custom_node(pack_dir, base))
                if not ok:
                    raise RuntimeError("the app's loader failed (see its log)")
            else:
                assert host is not None
                # The same per-node deadline as the direct side: a node that hangs fails with the
                # runtime's CallTimeout and its worker is restarted, so later nodes do not wait.
                loop.run_until_complete(host.load_custom_node(pack_dir, nodes.NODE_CLASS_MAPPINGS,
                                                              nodes.NODE_DISPLAY_NAME_MAPPINGS,
                                                              timeout=a.node_timeout))
            rec["loaded"] = True
        except Exception as e:  # noqa: BLE001
            rec["error"] = f"{type(e).__name__}: {e}"[-4000:]
            traceback.print_exc()
        rec["load_s"] = time.perf_counter() - t0
        rec["loaded_at_s"] = time.time() - boot_at
        if host is not None:
            rec["cell"] = cell_of(host, name)
            rec["load_phases"] = next((v for k, v in host.load_times.items()
                                       if os.path.basename(host._pack_dirs.get(k, "").rstrip("/")) == name), None)
        rec["nodes"] = sorted(n for n in nodes.NODE_CLASS_MAPPINGS if n not in before_nodes)
        rec["routes"] = sorted(f"{m} {p}" for m, p in ({(r.method, r.path) for r in srv.routes
                                                        if isinstance(r, web.RouteDef)} - before_routes))
        result["packs"][name] = rec
    for k, v in helper_nodes().items():
        nodes.NODE_CLASS_MAPPINGS[k] = v

    srv.add_routes()
    app_main.hijack_progress(srv)
    loop.run_until_complete(srv.setup())
    loop.run_until_complete(srv.start_multi_address([("127.0.0.1", a.port)], None, False))
    threading.Thread(target=loop.run_forever, daemon=True).start()

    t0 = time.perf_counter()
    status, _, body = http(a.port, "/object_info", 120)
    infos = json.loads(body) if status == 200 else {}
    t1 = time.perf_counter()
    status, _, body = http(a.port, "/object_info", 120)
    again = json.loads(body) if status == 200 else {}
    # Seconds each /object_info took (the app asks every node's INPUT_TYPES; isolated, their workers).
    result["object_info_s"] = [t1 - t0, time.perf_counter() - t1]
    for name, rec in result["packs"].items():
        rec["object_info"] = {n: infos.get(n) for n in rec["nodes"]}
        # INPUT_TYPES that change from one call to the next (random defaults) cannot be compared.
        rec["object_info_unstable"] = sorted(n for n in rec["nodes"] if infos.get(n) != again.get(n))
        answers = {}
        for r in rec["routes"]:
            method, path = r.split(" ", 1)
            if method != "GET" or "{" in path:
                continue
            t0 = time.perf_counter()
            try:
                st, ctype, data = http(a.port, path, ROUTE_TIMEOUT)
                answers[path] = {"status": st, "type": ctype.split(";")[0],
                                 "sha": hashlib.sha256(data).hexdigest()[:16], "bytes": len(data),
                                 "ms": (time.perf_counter() - t0) * 1000}
            except Exception as e:  # noqa: BLE001
                answers[path] = {"status": None, "error": f"{type(e).__name__}: {e}"}
        rec["route_answers"] = answers
    if host is not None:
        for name, rec in result["packs"].items():
            ext = ext_of(host, name)
            rec["worker_memory"] = [proc_memory(_host_pid(w.pidfd)) for w in getattr(ext, "_workers", [])
                                    if w.alive and w.pidfd >= 0]
    if host is not None and host.manager._app_cells is not None:
        cells = host.manager._app_cells
        result["early_starts"] = cells.early_report  # what became of the prestart's app cells
        result["app_cells"] = {ac.cell.name: {"early": ac.early, "start_s": ac.start_s, "packs": sorted(ac.views),
                                              "zygote_pid": ac.cell.zygote_info.get("pid"),
                                              "memory": cell_memory(ac)} for ac in cells.cells}
    save(a.out, result)  # what is known so far survives a run stopped while nodes execute
    for name, rec in result["packs"].items():
        if a.no_outputs:
            break
        outs = {}
        for node in rec["nodes"]:
            info = infos.get(node)
            made = synth_inputs(info) if isinstance(info, dict) else None
            if made is None:
                continue
            inputs, helpers = made
            prompt = dict(helpers)
            prompt["target"] = {"class_type": node, "inputs": inputs}
            target = "target"
            if not info.get("output_node") and info.get("output"):
                prompt["sink"] = {"class_type": "NCSink", "inputs": {"value": ["target", 0]}}
                target = "sink"
            outs[node] = run_node(execution.PromptExecutor(srv, cache_args={"lru": 0, "ram": 0.0}), prompt, node,
                                  target, a.node_timeout, ISOLATED_GRACE if host is not None else 0.0)
            log_node(name, node, outs[node])
        rec["outputs"] = outs
        if host is not None:
            rec["restarts"] = getattr(ext_of(host, name), "restarts", None)
        save(a.out, result)
    save(a.out, result)
    if host is not None:
        asyncio.run_coroutine_threadsafe(host.stop(), loop).result(60)
    os._exit(0)


def cell_memory(ac: Any) -> Dict[str, Any]:
    """The app cell's zygote's memory (:func:`proc_memory`): its anonymous memory is what a
    second zygote costs."""
    try:
        pid = None
        for w in ac.cell.workers.values():  # a worker's parent is the zygote
            if w.pidfd >= 0:
                pid = _host_pid(w.pidfd)
                break
        return proc_memory(_parent(pid) if pid else _zygote_of_launcher(ac.cell.proc.pid))
    except Exception as e:  # noqa: BLE001 - a measurement, not a result
        return {"error": f"{type(e).__name__}: {e}"}


def proc_memory(pid: int) -> Dict[str, Any]:
    """A process's memory (kB, /proc/<pid>/smaps_rollup): Rss, Pss, Anonymous and unique
    (Uss: Private_Clean + Private_Dirty)."""
    out: Dict[str, Any] = {"pid": pid}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Anonymous"):
                    out[k] = int(v.split()[0])
    except OSError as e:
        out["error"] = str(e)
    out["Uss"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def _host_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise ValueError("no Pid in fdinfo")


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _zygote_of_launcher(launcher: int) -> int:
    """The largest process below the launcher (its zygote, under the sandbox's init)."""
    best, best_rss = launcher, -1
    todo = [launcher]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
            with open(f"/proc/{p}/statm") as f:
                rss = int(f.read().split()[1])
        except OSError:
            continue
        if rss > best_rss and p != launcher:
            best, best_rss = p, rss
        todo += kids
    return best


def ext_of(host: Any, folder: str) -> Any:
    """The extension of the pack loaded from ``folder`` (packs are keyed by their manifest name)."""
    for name, d in host._pack_dirs.items():
        if os.path.basename(d.rstrip("/")) == folder:
            return host.packs.get(name)
    return None


def cell_of(host: Any, folder: str) -> Dict[str, Any]:
    """Which cell a pack runs in (app cell or its own, and why)."""
    cells = getattr(host.manager, "_app_cells", None)
    ext = ext_of(host, folder)
    if cells is None or ext is None:
        return {"app_cell": False}
    own = getattr(cells, "own_cell", {}) or {}
    name = ext.config["name"]
    app = getattr(getattr(ext, "_cell", None), "_app", None)  # the AppCell of the pack's view
    return {"app_cell": name not in own, "own_cell_reason": own.get(name),
            # the app cell's start (its zygote importing torch + the app), part of the first pack's load
            "app_cell_start_s": getattr(app, "start_s", None),
            "app_cell_name": getattr(getattr(app, "cell", None), "name", None),
            "app_cell_early": getattr(app, "early", None),
            "zygote_errors": (getattr(getattr(app, "cell", None), "zygote_info", None) or {}).get("errors")}


def log_node(pack: str, node: str, r: Dict[str, Any]) -> None:
    what = "ok" if "digest" in r else f"FAIL {r.get('error', '')[:160]!r}"
    print(f"[{time.strftime('%H:%M:%S')}] {pack} {node}: {r.get('ms', 0) / 1000:.1f} s {what}", flush=True)


def save(path: str, result: Dict[str, Any]) -> None:
    """Write the results so far (atomically)."""
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def run_node(executor: Any, prompt: Dict[str, Any], node: str, target: str, limit: float,
             grace: float) -> Dict[str, Any]:
    """Validate and execute one node through the app's own machinery, on a thread of its own.

    ``limit``: the node's deadline (seconds). Directly (``grace`` 0) a node still running then
    is recorded as timed out and left running on its thread (a thread cannot be stopped);
    isolated, the packs' per-call timeout is ``limit``: the runtime fails the call
    (``CallTimeout``) and kills the worker, so the driver waits ``grace`` seconds more for that."""
    import execution

    box: Dict[str, Any] = {}

    def go() -> None:
        t0 = time.perf_counter()
        try:
            valid = asyncio.run(execution.validate_prompt("nc", prompt, [target]))
            if not valid[0]:
                box["error"] = f"invalid: {json.dumps(valid[1])[:300]} {json.dumps(valid[3])[:600]}"
                return
            executor.execute(prompt, f"nc-{node}", {}, [target])
            if not executor.success:
                msgs = [m for m in executor.status_messages if m[0] == "execution_error"]
                err = msgs[-1][1] if msgs else {}
                box["error"] = f"{err.get('exception_type')}: {str(err.get('exception_message'))[:500]}"
                if "CallTimeout" in str(err.get("exception_type")):
                    box["timeout"] = True
                return
            cached = executor.caches.outputs.get("target")
            box["digest"] = digest(cached.outputs if cached is not None else None)
            box["ui"] = sorted((executor.history_result.get("outputs") or {}).get("target", {}) or {})
        except BaseException as e:  # noqa: BLE001 - also SystemExit (rembg exits when onnxruntime is missing)
            box["error"] = f"{type(e).__name__}: {e}"[:600]
        finally:
            box["ms"] = (time.perf_counter() - t0) * 1000

    t = threading.Thread(target=go, daemon=True, name=f"node-{node}")
    t.start()
    t.join(limit + grace)
    if t.is_alive():
        return {"error": f"timeout: still running after {limit + grace:g} s", "timeout": True,
                "ms": (limit + grace) * 1000}
    return box


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
