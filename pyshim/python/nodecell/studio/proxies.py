"""Host-side classes standing for the nodes of isolated packs.

A proxy looks to the app exactly like the pack's node: classic proxies have
the same ``INPUT_TYPES``/``RETURN_TYPES``/``FUNCTION``/... attributes (``INPUT_TYPES``
asked of the pack's worker each time, as the app asks its own nodes; and
validation functions with the same argument names, which the app's executor
reads); v3 proxies subclass the app's own ``io.ComfyNode`` with the pack's
schema rebuilt from the app's own classes, so the app computes their
``/object_info`` itself. ``RELATIVE_PYTHON_MODULE`` names the pack.

Calls are forwarded to the pack's worker with the node's call context (prompt
and node ids, and for v3 nodes the hidden values the executor put on the
class), tensors cross without copies and results are rebuilt as the app's own
objects (``NodeOutput`` with ``ui``/``expand``/``block_execution``, UI outputs,
``ExecutionBlocker``). An interrupt raised in the worker is the app's own
``InterruptProcessingException`` again.
"""

from __future__ import annotations

import copy
import inspect
import logging
import sys
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Optional, Tuple

from ..errors import NodecellError, RemoteError
from .schema import from_data

if TYPE_CHECKING:
    from ..extension import Extension
    from .apps import AppProfile

__all__ = ["make_proxy", "is_proxy"]

log = logging.getLogger("nodecell.studio")

#: ``moved_after(ext, error)``: after a call of the pack in ``ext`` failed with ``error``, the
#: extension the pack was moved to where that call can work (``StudioHost`` moves a pack of an
#: app cell that wrote where an app layer would take it to a cell of its own, with one;
#: a call that failed on the pack's old cell while it moved runs in the new one), or None (the
#: error stands).
MovedAfter = Callable[["Extension", NodecellError], Awaitable[Optional["Extension"]]]

_HIDDEN = {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO",
           "dynprompt": "DYNPROMPT", "auth_token_comfy_org": "AUTH_TOKEN_COMFY_ORG",
           "api_key_comfy_org": "API_KEY_COMFY_ORG"}


def is_proxy(cls: Any) -> bool:
    """Whether ``cls`` is a proxy for a node of an isolated pack."""
    return isinstance(cls, type) and "_nodecell_extension" in vars(cls)


class _Binding:
    """What every proxy of one pack shares: its extension, the app, and a hook run after each call."""

    def __init__(self, ext: "Extension", allowed: Tuple[str, ...], profile: Optional["AppProfile"],
                 relative_module: Optional[str], after_call: Callable[[], Any],
                 moved_after: Optional[MovedAfter] = None) -> None:
        self.ext = ext
        self.allowed = allowed
        self.profile = profile
        self.relative_module = relative_module
        self.after_call = after_call
        self.moved_after = moved_after

    def call_context(self, hidden: Any = None) -> Dict[str, Any]:
        """The app's executing context (prompt, node, list index) and hidden values, as data."""
        out: Dict[str, Any] = {}
        p = self.profile
        if p is not None:
            eu = sys.modules.get(f"{p.execution_package}.utils")
            get = getattr(eu, "get_executing_context", None)
            cur = get() if get is not None else None
            if cur is not None:
                out.update(prompt_id=cur.prompt_id, node_id=cur.node_id, list_index=cur.list_index)
        if hidden is not None:
            h = {}
            for attr, key in _HIDDEN.items():
                v = getattr(hidden, attr, None)
                if v is not None:
                    h[key] = v
            out["hidden"] = h
            if "node_id" not in out and "UNIQUE_ID" in h:
                out["node_id"] = h["UNIQUE_ID"]
        return out

    async def call(self, method: str, node_id: str, inputs: Dict[str, Any], ctx: Dict[str, Any]) -> Any:
        try:
            try:
                out = await self.ext.call(method, node_id, inputs, ctx)
            except NodecellError as e:
                if isinstance(e, RemoteError):
                    self._reraise_interrupt(e)
                moved = await self.moved_after(self.ext, e) if self.moved_after is not None else None
                if moved is None:
                    raise
                # The pack now runs where this call can work (see MovedAfter): once more, there.
                out = await moved.call(method, node_id, inputs, ctx)
        finally:
            await self.after_call()
        return from_data(out, self.allowed)

    def input_types(self, node_id: str, loaded: Any) -> Any:
        """The node's ``INPUT_TYPES()`` asked of the pack now, as the app asks its own nodes (a
        list of files or models in it may have changed since the pack loaded); ``loaded`` (what it
        answered at load) while no worker of the pack is running (none started yet, one being
        restarted: the app's server never waits for a pack's start), for a pack on another node
        (Ray: synchronous calls use this node's channels) or where the call fails."""
        if self.ext.worker_pids and not getattr(self.ext, "remote", False):
            try:
                return from_data(self.ext.call_sync("input_types", node_id), self.allowed)
            except Exception as e:  # noqa: BLE001 - described as loaded; the node's own call reports errors
                log.warning("pack %r: INPUT_TYPES of %r from its worker failed (%s); as loaded", self.ext.name,
                            node_id, e)
        return copy.deepcopy(loaded)

    def _reraise_interrupt(self, e: RemoteError) -> None:
        if self.profile is not None and e.remote_type.endswith("InterruptProcessingException"):
            mm = sys.modules.get(self.profile.model_management_module)
            exc = getattr(mm, "InterruptProcessingException", None)
            if exc is not None:
                raise exc() from None


def make_proxy(ext: "Extension", node_id: str, info: Dict[str, Any], allowed: Tuple[str, ...],
               profile: Optional["AppProfile"] = None, relative_module: Optional[str] = None,
               after_call: Optional[Callable[[], Any]] = None, moved_after: Optional[MovedAfter] = None) -> type:
    """Build the host-side class that stands for node ``node_id`` of an isolated pack.

    ``info`` is what the pack's worker described (``StudioExtension.list_nodes``).
    ``moved_after`` (see :data:`MovedAfter`) may move the pack after a failed call, which then
    runs once more where the pack now is.
    """
    async def nothing() -> None:
        return None

    b = _Binding(ext, tuple(allowed), profile, relative_module, after_call or nothing, moved_after)
    if info["kind"] == "classic":
        return _classic_proxy(b, node_id, info)
    return _v3_proxy(b, node_id, info)


def _common_attrs(b: _Binding, node_id: str, info: Dict[str, Any]) -> Dict[str, Any]:
    attrs: Dict[str, Any] = {
        "_nodecell_extension": b.ext,
        "_nodecell_node_id": node_id,
        "_nodecell_pack": b.ext.name,
        "_nodecell_kind": info["kind"],
        "__module__": f"nodecell.studio.proxies.{b.ext.name}",
    }
    if b.relative_module is not None:
        attrs["RELATIVE_PYTHON_MODULE"] = b.relative_module
    return attrs


def _with_signature(fn: Callable[..., Any], spec: Dict[str, Any]) -> Callable[..., Any]:
    """Give ``fn`` the argument names of the pack's function (the executor reads them)."""
    names = [str(a) for a in spec.get("args") or [] if str(a).isidentifier()]
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    if spec.get("varkw"):
        params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return fn


def _classic_proxy(b: _Binding, node_id: str, info: Dict[str, Any]) -> type:
    input_types = from_data(info["input_types"], b.allowed)
    func = info.get("FUNCTION", "execute")

    async def run(self: Any, **inputs: Any) -> Any:
        return await b.call("execute", node_id, inputs, b.call_context())

    run.__name__ = func
    attrs: Dict[str, Any] = _common_attrs(b, node_id, info)
    attrs.update({
        "INPUT_TYPES": classmethod(lambda cls: b.input_types(node_id, input_types)),
        func: run,
        "__doc__": info.get("doc") or f"Proxy for {node_id} of isolated pack {b.ext.name!r}.",
    })
    for a in ("RETURN_TYPES", "RETURN_NAMES", "OUTPUT_IS_LIST", "OUTPUT_TOOLTIPS"):
        if a in info:
            v = from_data(info[a], b.allowed)
            attrs[a] = tuple(v) if isinstance(v, list) else v
    for a in ("FUNCTION", "CATEGORY", "OUTPUT_NODE", "DESCRIPTION", "INPUT_IS_LIST", "DEPRECATED", "EXPERIMENTAL",
              "SEARCH_ALIASES", "NOT_IDEMPOTENT", "API_NODE"):
        if a in info:
            attrs[a] = from_data(info[a], b.allowed)
    if info.get("has_is_changed"):
        async def is_changed(cls: Any, **inputs: Any) -> Any:
            return await b.call("is_changed", node_id, inputs, b.call_context())
        attrs["IS_CHANGED"] = classmethod(is_changed)
    if "validate_inputs" in info:
        async def validate(*args: Any, **inputs: Any) -> Any:
            return await b.call("validate_inputs", node_id, inputs, b.call_context())
        attrs["VALIDATE_INPUTS"] = classmethod(_with_signature(validate, info["validate_inputs"]))
    if info.get("has_check_lazy_status"):
        async def check_lazy_status(self: Any, **inputs: Any) -> Any:
            return await b.call("check_lazy_status", node_id, inputs, b.call_context())
        attrs["check_lazy_status"] = check_lazy_status
    return type(info.get("class_name", node_id), (), attrs)


def _host_io(allowed: Tuple[str, ...]) -> Any:
    for pkg in allowed:
        for name in (f"{pkg}.latest", pkg):
            mod = sys.modules.get(name)
            if mod is not None and hasattr(mod, "io"):
                return mod.io
    return None


def _v3_proxy(b: _Binding, node_id: str, info: Dict[str, Any]) -> type:
    schema = from_data(info["schema"], b.allowed)
    base: type = object
    io = _host_io(b.allowed)
    if io is not None and isinstance(getattr(io, "ComfyNode", None), type):
        base = io.ComfyNode

    def define_schema(cls: Any) -> Any:
        return copy.deepcopy(schema)

    async def execute(cls: Any, **inputs: Any) -> Any:
        return await b.call("execute", node_id, inputs, b.call_context(getattr(cls, "hidden", None)))

    attrs: Dict[str, Any] = _common_attrs(b, node_id, info)
    attrs.update({
        "define_schema": classmethod(define_schema),
        "DEFINE_SCHEMA": classmethod(define_schema),  # the early prototype's name
        "execute": classmethod(execute),
        "_nodecell_schema": schema,
        "__doc__": info.get("doc") or f"Proxy for v3 node {node_id} of isolated pack {b.ext.name!r}.",
    })
    if "validate_inputs" in info or info.get("has_validate_inputs"):
        async def validate_inputs(cls: Any, *args: Any, **inputs: Any) -> Any:
            return await b.call("validate_inputs", node_id, inputs, b.call_context(getattr(cls, "hidden", None)))
        spec = info.get("validate_inputs")
        fn = _with_signature(validate_inputs, spec) if isinstance(spec, dict) else validate_inputs
        attrs["validate_inputs"] = classmethod(fn)
    if info.get("fingerprint_inputs") or info.get("has_fingerprint_inputs"):
        async def fingerprint_inputs(cls: Any, **inputs: Any) -> Any:
            return await b.call("is_changed", node_id, inputs, b.call_context(getattr(cls, "hidden", None)))
        attrs["fingerprint_inputs"] = classmethod(fingerprint_inputs)
    if info.get("check_lazy_status") or info.get("has_check_lazy_status"):
        async def check_lazy_status(cls: Any, **inputs: Any) -> Any:
            return await b.call("check_lazy_status", node_id, inputs,
                                b.call_context(getattr(cls, "hidden", None)))
        attrs["check_lazy_status"] = classmethod(check_lazy_status)
    return type(info.get("class_name", node_id), (base,), attrs)
