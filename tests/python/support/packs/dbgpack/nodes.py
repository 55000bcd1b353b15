"""Functions the tools tests stop in, step through and time (line numbers matter: tests name them)."""
import os
import time


def add(a, b):
    total = a + b
    total = total * 2
    return total


def stop_here(x):
    y = x + 1
    breakpoint()
    z = y * 10
    return z


async def astop_here(x):
    y = x + 1
    breakpoint()
    return y * 10


def busy(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def crash(code):
    os._exit(code)
