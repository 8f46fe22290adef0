"""What every test package shares: a free port, and a bounded wait that says what it waited for."""

import socket
import time


class TimedOut(AssertionError):
    """A bounded wait ran out: the test fails, naming what it waited for."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll `predicate` until it returns something truthy (returned); raise TimedOut after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
