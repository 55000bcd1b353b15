"""A pack for the developer-tools tests: code to stop in, step through, time and crash."""
from .nodes import add, astop_here, busy, crash, sleep, stop_here  # noqa: F401
