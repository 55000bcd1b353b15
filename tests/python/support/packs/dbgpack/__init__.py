"""A pack for the developer-tools tests: code to stop in, step through and time."""
from .nodes import add, astop_here, busy, stop_here  # noqa: F401
