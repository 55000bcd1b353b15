"""A pack that misbehaves on purpose. Each node tries one bad thing and reports what happened.

Every probe returns a short report string; a probe that crashes or is killed
surfaces in the host as a node error instead.
"""
import errno
import os
import socket


def _attempt(fn):
    """Run one bad idea; report ``ALLOWED: <what it got>`` or ``blocked (<the error>)``."""
    try:
        return "ALLOWED: " + str(fn())[:120]
    except OSError as e:  # noqa: BLE001 - reporting what the wall said is the point
        name = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
        return f"blocked ({name}: {e.strerror or e})"
    except Exception as e:  # noqa: BLE001
        return f"blocked ({type(e).__name__}: {e})"[:160]


class ReadSecrets:
    """Tries to read the user's SSH keys, /etc/shadow, a world-readable file of the host and a
    secret from the host's environment."""

    CATEGORY = "examples/misbehaving"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"home": ("STRING", {"default": "/root"})},
                "optional": {"host_file": ("STRING", {"default": "/etc/hostname"})}}

    def run(self, home, host_file="/etc/hostname"):
        def ssh():
            return os.listdir(os.path.join(home, ".ssh"))

        def shadow():
            with open("/etc/shadow") as f:
                return f.readline()

        def other_file():
            with open(host_file) as f:
                return f.read(80)

        def secret():
            v = os.environ.get("NODECELL_DEMO_SECRET")
            if v is None:
                raise LookupError("not in this process's environment")
            return v

        return ("\n".join([f"{home}/.ssh: {_attempt(ssh)}", f"/etc/shadow: {_attempt(shadow)}",
                            f"{host_file}: {_attempt(other_file)}",
                            f"$NODECELL_DEMO_SECRET: {_attempt(secret)}"]),)


class OpenSocket:
    """Tries to reach the network: a TCP connection out, and a service on the host's loopback."""

    CATEGORY = "examples/misbehaving"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"host_port": ("INT", {"default": 0})}}

    def run(self, host_port):
        def outbound():
            with socket.create_connection(("1.1.1.1", 53), timeout=2) as s:
                return s.getpeername()

        def loopback():
            with socket.create_connection(("127.0.0.1", host_port), timeout=2) as s:
                return s.recv(64)

        return (f"TCP 1.1.1.1:53: {_attempt(outbound)}\nhost's 127.0.0.1:{host_port}: {_attempt(loopback)}",)


class LeakMemory:
    """Allocates memory until something stops it."""

    CATEGORY = "examples/misbehaving"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"megabytes": ("INT", {"default": 2048})}}

    def run(self, megabytes):
        hog = []
        for _ in range(megabytes):
            hog.append(bytearray(1 << 20))  # touched: bytearray zero-fills
        return (f"ALLOWED: allocated {len(hog)} MiB",)


class Crash:
    """Crashes the worker process (SIGSEGV)."""

    CATEGORY = "examples/misbehaving"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
        return ("still alive?",)


NODE_CLASS_MAPPINGS = {"ReadSecrets": ReadSecrets, "OpenSocket": OpenSocket, "LeakMemory": LeakMemory,
                       "Crash": Crash}
