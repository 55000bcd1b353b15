"""A small application written against pyisolate's API, for tests/python/test_compat_pyisolate.py:
an adapter with a serializer and services, and an extension class.

It imports ``pyisolate``: in the host after ``nodecell.compat.install_pyisolate_alias()``,
in workers through the alias nodecell installs there.
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading

import pyisolate
from pyisolate import ExtensionBase, ProxiedSingleton, local_execution
from pyisolate._internal.rpc_protocol import get_child_rpc_instance
from pyisolate.interfaces import IsolationAdapter


class Money:
    """An application type that crosses through the adapter's serializer."""

    def __init__(self, cents: int, currency: str) -> None:
        self.cents = cents
        self.currency = currency
        self.where = "made here"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.cents, self.currency) == (other.cents, other.currency)


def _ser(m: Money) -> dict:
    return {"__type__": "Money", "cents": m.cents, "currency": m.currency}


def _de(d: dict) -> Money:
    m = Money(d["cents"], d["currency"])
    m.where = f"deserialized in pid {os.getpid()}"
    return m


class Child(ProxiedSingleton):
    """A service reached through a type-hinted attribute of another."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    async def hit(self) -> int:
        self.hits += 1
        return self.hits


class Counter(ProxiedSingleton):
    """A host service: async and sync methods, one local method, a nested singleton."""

    child: Child
    nested = Child()  # registered with it on the host (pyisolate's _register)

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.seen = []

    async def add(self, n: int) -> int:
        self.value += n
        return self.value

    def get(self) -> int:
        return self.value

    async def keep(self, m: Money) -> str:
        self.seen.append(m)
        return m.where

    async def give(self, cents: int) -> Money:
        return Money(cents, "EUR")

    @local_execution
    def where_am_i(self) -> int:
        return os.getpid()


class AppAdapter(IsolationAdapter):
    """The application's adapter (registered in the host with pyisolate.register_adapter)."""

    @property
    def identifier(self) -> str:
        return "ncapp"

    def get_path_config(self, module_path: str) -> dict:
        return {"preferred_root": None, "additional_paths": []}

    def setup_child_environment(self, snapshot: dict) -> None:
        os.environ["NCAPP_CHILD_SETUP"] = str(snapshot.get("adapter_name"))

    def register_serializers(self, registry) -> None:
        registry.register("Money", _ser, _de)

    def setup_web_directory(self, module) -> None:
        return None

    def provide_rpc_services(self) -> list:
        return [Counter]

    def handle_api_registration(self, api, rpc) -> None:
        os.environ["NCAPP_API_" + (api.__name__ if isinstance(api, type) else type(api).__name__)] = "1"

    def setup_child_event_hooks(self, extension) -> None:
        os.environ["NCAPP_EVENT_HOOKS"] = type(extension).__name__

    def get_sandbox_system_paths(self):
        return None

    def get_sandbox_gpu_patterns(self):
        return None


class Echo:
    """A worker-side object registered as a named callee."""

    def __init__(self) -> None:
        self.calls = 0

    def shout(self, s: str) -> str:
        self.calls += 1
        return s.upper()

    async def ashout(self, s: str) -> str:
        await asyncio.sleep(0)
        return s.upper() + "!"


class Greeter:
    """Type of a host-side callee the worker creates a caller for."""

    async def greet(self, who: str) -> str:
        raise NotImplementedError  # runs on the host

    def sync_greet(self, who: str) -> str:
        raise NotImplementedError


class AppExt(ExtensionBase):
    """The extension class; every public method is callable from the host."""

    async def on_module_loaded(self, module) -> None:
        self.value = module.VALUE

    async def ping(self) -> str:
        return "pong"

    def call(self, x):  # the handle's own API never shadows this
        return ("call", x)

    def env(self, key: str):
        return os.environ.get(key)

    def pid(self) -> int:
        return os.getpid()

    async def has_child_rpc(self) -> bool:
        return get_child_rpc_instance() is not None and get_child_rpc_instance() is self._rpc

    async def money_roundtrip(self, m):
        assert isinstance(m, Money), type(m)
        return Money(m.cents * 2, m.currency), m.where

    async def use_counter(self, n: int):
        c = Counter()
        after = await c.add(n)
        sync_value = await c.get()  # a sync host method through a caller: awaitable too
        where = await c.keep(Money(5, "USD"))
        given = await c.give(7)
        return (after, sync_value, where, given.cents, given.where.startswith("deserialized"),
                c.where_am_i() == os.getpid(), await c.child.hit())

    async def caller_errors(self) -> list:
        out = []
        for name in ("no_such_method", "_private", "value"):
            try:
                getattr(Counter(), name)
                out.append(f"{name}: reachable")
            except AttributeError:
                out.append(f"{name}: AttributeError")
        return out

    def from_a_thread_loop(self, n: int) -> int:
        """A sync method that runs a caller in a new loop on another thread (ComfyUI does)."""
        box = {}

        def run() -> None:
            box["v"] = asyncio.run(Counter().add(n))

        t = threading.Thread(target=run)
        t.start()
        t.join()
        return box["v"]

    def register_echo(self) -> str:
        self.echo = Echo()
        self.register_callee(self.echo, "echo")
        return "echo"

    async def greet_host(self, who: str) -> str:
        g = self.create_caller(Greeter, "greeter")
        return await g.greet(who) + " / " + await g.sync_greet(who)

    def emit(self, name: str, payload) -> str:
        self.emit_event(name, payload)
        return "sent"

    async def aemit(self, name: str, payload) -> str:
        self.emit_event(name, payload)
        return "sent"

    def tensor_ptr(self, t) -> int:
        return t.data_ptr()

    def add_one(self, t):
        return t + 1

    def crash(self) -> None:
        os._exit(3)

    def imported_from(self, mod: str):
        m = __import__(mod)
        return getattr(m, "__file__", None)

    def versions(self) -> dict:
        return {"pyisolate": pyisolate.__version__, "python": sys.version.split()[0]}
