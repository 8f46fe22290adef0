"""Counting SQL statements, wall time and peak Python memory around one call.

Statements are counted with `connection.execute_wrapper` (every statement Django sends, savepoints
included; BEGIN/COMMIT of autocommit transactions are not statements and are not counted). Each
statement is attributed to the innermost *scope* open when it ran: the governance scenarios open a
scope around each per-item call (one email, one soft delete, one hard delete), so the rest is the
selection and bookkeeping, the part that must not grow with the number of surveys.

Memory, two ways. Every pass records its peak RSS growth (Linux: free heap is handed back with
malloc_trim, the VmHWM high-water mark is reset through /proc/self/clear_refs, and the peak is
compared with VmRSS at the start); it costs nothing, but is page-grained and counts allocator
slack. The Python heap peak comes from tracemalloc, in a separate pass: tracemalloc made the
governance run three times slower here (ORM, templates and MIME are allocation-heavy), so a pass
with `memory=True` reports memory only and its wall time is not used.
"""

import ctypes
import ctypes.util
import gc
import re
import time
import tracemalloc
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection, transaction

MIB = 1024 * 1024
SELECTION = "selection"
DEFERRED = "deferred"  # a call whose scope is named once it returns (Meter.wrap_deferred)


def statement_kind(sql):
    word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    if word in {"SAVEPOINT", "RELEASE", "ROLLBACK"}:
        return "savepoint"
    return word.lower() if word in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"} else "other"


@dataclass
class Meter:
    """An execute wrapper: statements by scope and by kind, and calls and seconds per scope."""

    scopes: list = field(default_factory=lambda: [SELECTION])
    statements: Counter = field(default_factory=Counter)  # scope -> statements
    by_kind: Counter = field(default_factory=Counter)  # select/insert/update/delete/savepoint/other
    calls: Counter = field(default_factory=Counter)  # scope -> calls
    seconds: defaultdict = field(default_factory=lambda: defaultdict(float))  # scope -> seconds inside

    def __call__(self, execute, sql, params, many, context):
        self.statements[self.scopes[-1]] += 1
        self.by_kind[statement_kind(sql)] += 1
        return execute(sql, params, many, context)

    @contextmanager
    def scope(self, name):
        self.scopes.append(name)
        self.calls[name] += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started
            self.scopes.pop()

    def wrap(self, name, function):
        """`function`, counted under `name` each time it is called."""

        def counted(*args, **kwargs):
            with self.scope(name):
                return function(*args, **kwargs)

        counted.__wrapped__ = function
        return counted

    def wrap_deferred(self, name_after, function):
        """`function`, counted under the scope that `name_after()` names once the call has returned (for a
        call whose kind is only known inside it, such as one run item)."""

        def counted(*args, **kwargs):
            self.scopes.append(DEFERRED)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.scopes.pop()
                name = name_after()
                self.statements[name] += self.statements.pop(DEFERRED, 0)
                self.calls[name] += 1
                self.seconds[name] += time.perf_counter() - started

        counted.__wrapped__ = function
        return counted

    @property
    def total(self):
        return sum(self.statements.values())


def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as status:
            return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_rss_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); returns the RSS in KiB, or None if unsupported."""
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return None
    return _proc_status_kib("VmRSS")


class Rollback(Exception):
    pass


@dataclass
class Measurement:
    result: object
    wall_s: float
    meter: Meter
    peak_mib: float | None = None
    retained_mib: float | None = None
    peak_rss_mib: float | None = None


def measure(function, *, memory=False, rollback=False, meter=None):
    """Call `function()` once under a statement meter.

    memory=True traces allocations (peak above the starting point, and what is still held at the end);
    rollback=True runs it in a transaction that is rolled back, so a destructive job can be measured
    again on the same rows (inner transactions become savepoints: use it for memory, not for time).
    """
    meter = meter or Meter()
    gc.collect()
    if memory:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    result = None
    rss_start = reset_rss_peak()
    started = time.perf_counter()
    try:
        with connection.execute_wrapper(meter):
            if rollback:
                try:
                    with transaction.atomic():
                        result = function()
                        raise Rollback
                except Rollback:
                    pass
            else:
                result = function()
        wall = time.perf_counter() - started
        peak = retained = rss = None
        rss_peak = _proc_status_kib("VmHWM")
        if rss_start is not None and rss_peak is not None:
            rss = (rss_peak - rss_start) / 1024
        if memory:
            current, top = tracemalloc.get_traced_memory()
            peak, retained = (top - base) / MIB, (current - base) / MIB
    finally:
        if memory:
            tracemalloc.stop()
    return Measurement(result, wall, meter, peak, retained, rss)
