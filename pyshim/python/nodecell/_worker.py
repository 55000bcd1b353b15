"""The processes inside a pack's sandbox: the zygote and its workers.

Started by the host as ``<venv>/bin/python -s -E -c <bootstrap> --ctl-fd N ...``
inside ``nodecell run``. The **zygote** imports the pack's heavy modules once
(``--preload torch``; an entry ``module:function`` also calls the function, in
order), then forks a **worker** for each ``spawn`` request on the
control socket (a SOCK_SEQPACKET unix socket; fds by SCM_RIGHTS). Each worker
serves one channel (rings + socket) to the host.

The control messages (``spawn``/``kill``/``exit`` from the host; ``ready``/``spawned``/
``exited`` to it) are defined once in Rust (``nodecell_wire::control``): this module
builds and reads them only through ``_nodecell.encode_zygote_event`` and
``_nodecell.decode_zygote_request``, which check every field and the protocol version.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import selectors
import signal
import socket
import sys
import traceback
from typing import Any, Dict, List, Optional, Tuple

from . import _nodecell

_CTL_MAX = _nodecell.MAX_CONTROL_BYTES


# ----------------------------------------------------------------------------- zygote

def _send_ctl(sock: socket.socket, msg: Dict[str, Any], fds: Tuple[int, ...] = ()) -> None:
    data = _nodecell.encode_zygote_event(msg)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def zygote_main(ctl_fd: int, preload: List[str]) -> None:
    ctl = socket.socket(fileno=ctl_fd)
    ctl.setblocking(True)
    errors: Dict[str, str] = {}
    loaded = []
    for mod in preload:
        try:
            # "module:function": the module's function prepares what comes after (e.g. the
            # host app's command line applied before the app's modules are imported).
            name, _, fn = mod.partition(":")
            m = importlib.import_module(name)
            if fn:
                getattr(m, fn)()
            loaded.append(mod)
        except BaseException as e:  # noqa: BLE001 - report, do not die
            errors[mod] = f"{type(e).__name__}: {e}"
    # Import our own machinery once, so forked workers start warm.
    from . import _rpc, _worker_rt  # noqa: F401

    versions = {"python": sys.version.split()[0]}
    for m in ("numpy", "torch"):
        mod = sys.modules.get(m)
        if mod is not None:
            versions[m] = getattr(mod, "__version__", "?")
    from ._pack_setup import apply as apply_pack, imported_modules

    import gc

    gc.freeze()  # what the preload built stays shared with forked workers (no GC copy-on-write)

    _send_ctl(ctl, {"op": "ready", "pid": os.getpid(), "preloaded": loaded, "errors": errors,
                    "versions": versions, "modules": imported_modules()})

    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    children: Dict[int, int] = {}  # pid -> wid
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(rfd, selectors.EVENT_READ, "sig")

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            wid = children.pop(pid, None)
            msg: Dict[str, Any] = {"op": "exited", "wid": wid, "pid": pid}
            if os.WIFSIGNALED(status):
                msg["signal"] = os.WTERMSIG(status)
            else:
                msg["code"] = os.WEXITSTATUS(status)
            try:
                _send_ctl(ctl, msg)
            except OSError:
                pass

    while True:
        for key, _ in sel.select():
            if key.data == "sig":
                try:
                    os.read(rfd, 4096)
                except BlockingIOError:
                    pass
                reap()
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, _CTL_MAX, 4)
            except OSError:
                os._exit(0)
            if not data:
                os._exit(0)  # the host closed the control socket
            try:
                msg = _nodecell.decode_zygote_request(data)
            except _nodecell.WireError as e:
                print(f"nodecell zygote: ignoring a control message: {e}", file=sys.stderr, flush=True)
                for fd in fds:
                    os.close(fd)
                continue
            op = msg["op"]
            if op == "exit":
                for pid in list(children):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:  # gone, or confined to a uid of its own (the host kills by pidfd)
                        pass
                os._exit(0)
            if op == "kill":
                for pid, wid in list(children.items()):
                    if wid == msg["wid"]:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:  # gone, or confined to a uid of its own (the host kills by pidfd)
                            pass
                continue
            if op == "spawn" and len(fds) != 2:
                print(f"nodecell zygote: spawn {msg['wid']}: expected 2 fds (ring, socket), got {len(fds)}",
                      file=sys.stderr, flush=True)
            if op == "spawn" and len(fds) == 2:
                wid = msg["wid"]
                pid = os.fork()
                if pid == 0:
                    # The worker: drop the zygote's fds and signal setup, then serve.
                    try:
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        signal.signal(signal.SIGTERM, signal.SIG_DFL)
                        sel.close()
                        os.close(rfd)
                        os.close(wfd)
                        ctl.close()
                        if msg.get("pack") is not None:  # an app cell: this fork becomes the pack's
                            apply_pack(msg["pack"])
                        worker_main(fds[0], fds[1])
                    except BaseException:  # noqa: BLE001
                        traceback.print_exc()
                        os._exit(70)
                    os._exit(0)
                for fd in fds:
                    os.close(fd)
                children[pid] = wid
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    pidfd = -1
                try:
                    _send_ctl(ctl, {"op": "spawned", "wid": wid, "pid": pid},
                              (pidfd,) if pidfd >= 0 else ())
                finally:
                    if pidfd >= 0:
                        os.close(pidfd)
                continue
            for fd in fds:
                os.close(fd)


# ----------------------------------------------------------------------------- worker

def worker_main(ring_fd: int, sock_fd: int) -> None:
    from . import _nodecell
    from ._worker_rt import WorkerEndpoint

    ch = _nodecell.Channel.open(ring_fd, sock_fd)
    # torch's large CPU allocations in shared arenas from here on (this process only,
    # never the zygote): outputs then cross without a copy. NODECELL_WORKER_HEAP=0: off.
    _nodecell.worker_heap(ch)
    ep = WorkerEndpoint(ch)
    code = ep.serve()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nodecell-worker")
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--preload", default="")
    a = p.parse_args(argv)
    preload = [m for m in a.preload.split(",") if m]
    if os.environ.get("NODECELL_PYISOLATE_ALIAS") == "1":
        # Loaded through nodecell.compat.pyisolate: `import pyisolate` resolves to it here too.
        from .compat import _worker_setup

        _worker_setup.install()
    zygote_main(a.ctl_fd, preload)


if __name__ == "__main__":
    main()
