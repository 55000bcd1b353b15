"""HTTP routes a pack registers at import, served by the host's real aiohttp server.

Worker side: the pack decorates handlers with ``PromptServer.instance.routes``
(a real ``aiohttp.web.RouteTableDef``); :func:`describe` turns the table into
data, and :func:`handle` runs one handler on a request rebuilt from data (a real
``aiohttp.web.Request`` over the received body, so ``await request.json()``,
``request.query``, ``request.match_info``, multipart ``request.post()`` work)
and turns its response into data.

Host side: :func:`register` adds each route to the host app's own route table
(``PromptServer.instance.routes``, so the app also adds its ``/api`` twin);
the handler forwards the request to the pack's current worker by route key, so
routes survive worker restarts. Static folders are served by the host itself,
and only from inside the pack's folder.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["describe", "handle", "register", "MAX_BODY"]

log = logging.getLogger("nodecell.studio")

#: Largest request or response body that crosses (bytes).
MAX_BODY = 256 << 20
_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "content-encoding"}


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


# -- worker side ------------------------------------------------------------------------------

def describe(table: Any) -> Tuple[List[Dict[str, Any]], Dict[str, Callable[..., Any]]]:
    """(route descriptions, handlers by key) of a worker's ``RouteTableDef``."""
    from aiohttp import web

    out: List[Dict[str, Any]] = []
    handlers: Dict[str, Callable[..., Any]] = {}
    for r in table:
        if isinstance(r, web.RouteDef):
            key = f"{r.method} {r.path}"
            handlers[key] = r.handler
            out.append({"kind": "route", "key": key, "method": r.method, "path": r.path,
                        "kwargs": _plain({k: v for k, v in r.kwargs.items() if k in ("name", "allow_head")})})
        elif isinstance(r, web.StaticDef):
            out.append({"kind": "static", "prefix": r.prefix, "path": os.fspath(r.path),
                        "kwargs": _plain({k: v for k, v in r.kwargs.items()
                                          if k in ("name", "show_index", "append_version")})})
    return out, handlers


async def handle(handler: Callable[..., Any], req: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``handler`` on the request ``req`` (data from the host) and return its response as data."""
    from aiohttp import web

    request = _request(req)
    try:
        resp = handler(request)
        if asyncio.iscoroutine(resp) or isinstance(resp, asyncio.Future):
            resp = await resp
    except web.HTTPException as e:
        resp = e
    return _response(resp)


def _request(req: Dict[str, Any]) -> Any:
    from unittest import mock

    from aiohttp import streams
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    body = req.get("body") or b""
    if not isinstance(body, bytes):
        raise TypeError("request body must be bytes")
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 1 << 16, loop=asyncio.get_running_loop())
    if body:
        payload.feed_data(body)
    payload.feed_eof()
    headers = CIMultiDict((str(k), str(v)) for k, v in req.get("headers") or [])
    return make_mocked_request(str(req["method"]), str(req["path_qs"]), headers=headers,
                               match_info={str(k): str(v) for k, v in (req.get("match_info") or {}).items()},
                               payload=payload, client_max_size=max(len(body) + 1, 1 << 20))


def _response(resp: Any) -> Dict[str, Any]:
    from aiohttp import web

    if isinstance(resp, web.FileResponse):
        path = os.fspath(resp._path)  # noqa: SLF001 - the file aiohttp would send
        size = os.path.getsize(path)
        if size > MAX_BODY:
            raise ValueError(f"route response: {path} is {size} bytes, more than {MAX_BODY}")
        with open(path, "rb") as f:
            body = f.read()
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP]
        if not any(k.lower() == "content-type" for k, _ in headers):
            ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            headers.append(("Content-Type", ctype))
        return {"status": resp.status, "headers": headers, "body": body}
    if not isinstance(resp, web.Response):
        if isinstance(resp, web.StreamResponse):
            raise TypeError("route handlers of isolated packs cannot stream (StreamResponse/WebSocketResponse); "
                            "return a Response")
        raise TypeError(f"route handler returned {type(resp).__name__}, expected an aiohttp Response")
    body = resp.body
    if body is None:
        body = b""
    elif not isinstance(body, (bytes, bytearray, memoryview)):
        value = getattr(body, "_value", None)  # aiohttp payloads keep what they send
        if isinstance(value, (bytes, bytearray)):
            body = bytes(value)
        elif isinstance(value, str):
            body = value.encode(getattr(body, "encoding", None) or "utf-8")
        elif hasattr(value, "getvalue"):
            body = value.getvalue()
        else:
            raise TypeError(f"route response body of type {type(body).__name__} cannot cross")
    headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP]
    return {"status": resp.status, "reason": resp.reason, "headers": headers, "body": bytes(body)}


# -- host side ---------------------------------------------------------------------------------

def register(table: Any, routes: List[Dict[str, Any]], pack_dir: str,
             call: Callable[[str, Dict[str, Any]], Any], pack: str) -> List[str]:
    """Add a worker's routes to the host's route table; returns what was added (``METHOD path``).

    ``call(key, request_data)`` sends a request to the pack's worker and returns
    (an awaitable of) the response data.
    """
    from aiohttp import web

    added = []
    have = {(r.method, r.path) for r in table if isinstance(r, web.RouteDef)}
    root = os.path.realpath(pack_dir)
    for d in routes:
        if not isinstance(d, dict):
            continue
        kwargs = {k: v for k, v in (d.get("kwargs") or {}).items() if isinstance(k, str)}
        if d.get("kind") == "route":
            method, path, key = d.get("method"), d.get("path"), d.get("key")
            if not all(isinstance(x, str) for x in (method, path, key)) or not path.startswith("/"):
                log.warning("pack %r: malformed route %r left out", pack, d)
                continue
            if (method, path) in have:
                continue
            table.route(method, path, **{k: v for k, v in kwargs.items() if k in ("name", "allow_head")})(
                _forwarder(call, key, pack))
            have.add((method, path))
            added.append(f"{method} {path}")
        elif d.get("kind") == "static":
            prefix, path = d.get("prefix"), d.get("path")
            if not isinstance(prefix, str) or not isinstance(path, str) or not prefix.startswith("/"):
                continue
            real = os.path.realpath(path)
            if not (real == root or real.startswith(root + os.sep)) or not os.path.isdir(real):
                log.warning("pack %r: static route %s -> %s refused: only folders inside the pack (%s) are served",
                            pack, prefix, path, root)
                continue
            table.static(prefix, real, **{k: v for k, v in kwargs.items() if k in ("show_index",)})
            added.append(f"static {prefix}")
    return added


def _forwarder(call: Callable[[str, Dict[str, Any]], Any], key: str, pack: str) -> Callable[..., Any]:
    from aiohttp import web

    async def handler(request: Any) -> Any:
        body = await request.read()
        if len(body) > MAX_BODY:
            return web.Response(status=413, text="request body too large for an isolated pack")
        req = {"method": request.method, "path_qs": str(request.rel_url), "body": body,
               "headers": [(k, v) for k, v in request.headers.items()],
               "match_info": dict(request.match_info)}
        try:
            r = call(key, req)
            if asyncio.iscoroutine(r) or isinstance(r, asyncio.Future):
                r = await r
        except Exception as e:  # noqa: BLE001 - the pack's failure is an HTTP error, not a host crash
            log.warning("pack %r: route %s failed: %s", pack, key, e)
            return web.Response(status=500, text=f"{type(e).__name__}: {e}")
        return _host_response(r, pack, key)

    handler.__name__ = f"nodecell_{pack}_route"
    return handler


def _host_response(r: Any, pack: str, key: str) -> Any:
    from aiohttp import web

    try:
        status = int(r["status"])
        if not 100 <= status <= 599:
            raise ValueError(f"status {status}")
        body = r.get("body") or b""
        if not isinstance(body, bytes):
            raise TypeError("body is not bytes")
        headers: List[Tuple[str, str]] = []
        for k, v in r.get("headers") or []:
            k, v = str(k), str(v)
            if k.lower() in _HOP or any(c in k + v for c in "\r\n\0"):
                continue
            headers.append((k, v))
        reason: Optional[str] = r.get("reason") if isinstance(r.get("reason"), str) else None
        if reason is not None and any(c in reason for c in "\r\n\0"):
            reason = None
        return web.Response(status=status, reason=reason, headers=headers, body=body)
    except Exception as e:  # noqa: BLE001
        log.warning("pack %r: route %s answered malformed data: %s", pack, key, e)
        return web.Response(status=502, text=f"isolated pack {pack!r} answered a malformed response")
