"""A server's memory under traffic of every shape: fewer glibc heaps, and freed memory handed back after big batches.

With onnxruntime's CPU arena off (``HEADREG_ORT_CPU_ARENA=0``, what ``headreg serve`` sets unless told
otherwise), every tensor of a run is returned to the C allocator when the run ends. glibc keeps what was freed
for reuse, in the heap of each thread that allocated it, and returns only what sits at the very top of a heap:
after one batch of 4 x 512-token windows a server keeps ~150 MB it no longer uses, and with rows of every length
the free space fragments and the high-water mark creeps up. ``malloc_trim(0)`` releases the free pages of
every heap (measured: a Predictor after a mix of short batches and windowed texts went from 182 MB to 328 MB,
back to 179 MB after one trim; with the arena on it stayed at 300 MB). It walks every heap, so it costs
milliseconds (12-55 ms measured here): it runs after batches big enough to leave that much behind, at most once
per ``min_interval`` seconds. Elsewhere than glibc (musl, macOS) there is nothing to call and nothing is done.

glibc also gives each thread that allocates its own heap (up to 8 per core), and each keeps its own high-water
mark: the model thread and onnxruntime's, and the worker threads that parse big bodies and tokenize long texts.
Measured one attacker at a time (1-minute chaos runs, arena off): windowed long texts +91 MB, clients hanging up
on big requests +64 MB, malformed 2 MB bodies +45 MB, each in its own threads' heaps. :func:`limit_heaps` caps
them at two (glibc's ``M_ARENA_MAX``, what ``MALLOC_ARENA_MAX=2`` sets; a variable set by the user wins).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from typing import Callable

# The most attention cells (rows x longest row squared) one batch may hold. The token budget alone lets rows of
# 256-token windows run 8 at a time, and a batch's working memory grows with its attention scores: MiniLM
# fp32, 2 threads, arena off, RSS above the loaded model while such batches run back to back: 8 x 256 +76-93 MB,
# 4 x 256 +35-41 MB, 2 x 256 +19 MB, at the same time per row (84-90 ms per row in all three, load 2.5; again
# on 2026-12-07 at load ~3, the session alone: 2 x 256 32.8 ms per row, 4 x 256 33.6). A server whose clients
# send windowed texts holds that much for as long as they do. Under the default token budget only rows longer
# than 64 tokens meet this cap first (2048 tokens x 64 = 2 x 256 x 256): 13 rows of 100 tokens instead of 20,
# 12.1 vs 11.8 ms per row (2.5 % more; the benchmark corpus's median row has 23 tokens).
ATTENTION_CELLS = 2 * 256 * 256
# The trim threshold, in the same cells: a full batch of 256-token windows (the batcher's cap above). A batch of
# short rows reaches it when its longest row has 64 tokens or more. Measured at 32 clients with a threshold
# met by ordinary batches, trims at most once a second cost 0.5-0.8 ms of CPU per request (6 %); at most once
# per TRIM_INTERVAL, a fifth of that.
TRIM_AT = ATTENTION_CELLS
TRIM_INTERVAL = 5.0
OWED_DELAY = 1.0
HEAPS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    if libc is None:
        return None
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def server_memory(cpu_arena: bool) -> bool:
    """A server process's memory defaults, set before its sessions and their threads exist (every session reads
    the arena setting, glibc's heaps are made per thread): onnxruntime's CPU arena as asked (off: what
    ``headreg serve`` defaults to), glibc's heaps capped. Returns whether freed memory should be trimmed
    (``ServeConfig.trim_memory``): with the arena on, onnxruntime keeps it anyway."""
    from ..runtime.session import ARENA_ENV

    os.environ[ARENA_ENV] = "1" if cpu_arena else "0"
    limit_heaps()
    return not cpu_arena


def limit_heaps(heaps: int = HEAPS) -> bool:
    """Cap glibc's heaps at ``heaps`` for the rest of the process (call it before threads start); False where it
    cannot (not glibc) or where ``MALLOC_ARENA_MAX`` is set (the user's choice stands)."""
    libc = _libc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(libc.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(int(heaps))))


class Trimmer:
    """``after_batch(rows, longest)`` from the model thread: trims once a big batch ran (see the module doc)."""

    def __init__(self, enabled: bool = True, threshold: int = TRIM_AT, min_interval: float = TRIM_INTERVAL):
        self._trim = _malloc_trim() if enabled else None
        self.threshold = threshold
        self.min_interval = min_interval
        self._pending = False
        self._last = self._not_before = 0.0
        self._lock = threading.Lock()  # several model workers call in: one trim at a time
        self.trims = 0
        self.seconds = 0.0

    @property
    def active(self) -> bool:
        return self._trim is not None

    def after_batch(self, rows: int, longest: int) -> None:
        if self._trim is None:
            return
        self._pending = self._pending or rows * longest * longest >= self.threshold
        self._run_if_due()

    def owe(self) -> bool:
        """Owe a trim for memory freed outside the batches (a big request's tokenizing): it runs at
        ``OWED_DELAY`` seconds at the soonest, once the request's frames are gone. False where trims are off."""
        if self._trim is None:
            return False
        self._pending = True
        self._not_before = time.monotonic() + OWED_DELAY
        return True

    def due_in(self) -> float | None:
        """Seconds until an owed trim may run (0: now), or None when none is owed: how long an idle model thread
        waits before :meth:`idle`, so a burst of big batches is handed back even when no batch follows it."""
        if self._trim is None or not self._pending:
            return None
        now = time.monotonic()
        return max(self.min_interval - (now - self._last), self._not_before - now, 0.0)

    def idle(self) -> None:
        self._run_if_due()

    def _run_if_due(self) -> None:
        if not self._lock.acquire(blocking=False):  # another worker is trimming right now
            return
        try:
            now = time.monotonic()
            if self._pending and now - self._last >= self.min_interval and now >= self._not_before:
                self._trim(0)
                self._pending = False
                self._last = time.monotonic()
                self.trims += 1
                self.seconds += self._last - now
        finally:
            self._lock.release()
