"""The extension `cargo xtask bench ray` calls (imported by the driver, the cell's actor and,
read-only in the sandbox, the worker). Self-contained: only this file is mounted."""
import nodecell


class RayBenchExt(nodecell.ExtensionBase):
    """The two calls the benchmark makes."""

    def noop(self):
        """Nothing: the round trip alone."""
        return None

    def echo(self, x):
        """``x`` back: a tensor goes there and back."""
        return x

