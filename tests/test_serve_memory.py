"""headreg.serve.memory: glibc's heaps capped and trimmed after big batches (the chaos benchmark measures the effect)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from headreg.serve.memory import Trimmer, limit_heaps


def test_trims_after_big_batches_only_and_at_most_once_per_interval():
    trimmer = Trimmer(threshold=8 * 256 * 256, min_interval=0.3)
    if not trimmer.active:
        pytest.skip("malloc_trim is glibc's")
    trimmer.after_batch(32, 119)  # the benchmark corpus's longest rows, a full batch: under the threshold
    assert trimmer.trims == 0
    trimmer.after_batch(8, 256)  # a batch of 256-token windows
    assert trimmer.trims == 1
    trimmer.after_batch(8, 256)  # within the interval: owed, not done
    assert trimmer.trims == 1
    time.sleep(0.35)
    trimmer.after_batch(1, 5)  # the owed trim, after the next batch of any size
    assert trimmer.trims == 2
    trimmer.after_batch(1, 5)
    assert trimmer.trims == 2 and trimmer.seconds >= 0


def test_a_disabled_trimmer_does_nothing():
    trimmer = Trimmer(enabled=False)
    trimmer.after_batch(64, 512)
    assert not trimmer.active and trimmer.trims == 0


def test_heaps_are_capped_unless_the_user_set_malloc_arena_max():
    if not Trimmer().active:
        pytest.skip("mallopt is glibc's")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    code = "from headreg.serve.memory import limit_heaps; print(limit_heaps())"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "True"
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"}, capture_output=True,
                            text=True, check=True)
    assert chosen.stdout.strip() == "False"
    assert limit_heaps.__defaults__ == (2,)


def test_an_owed_trim_runs_when_the_model_goes_idle():
    trimmer = Trimmer(threshold=100, min_interval=0.2)
    if not trimmer.active:
        pytest.skip("malloc_trim is glibc's")
    assert trimmer.due_in() is None  # nothing big ran: an idle thread sleeps until work comes
    trimmer.after_batch(4, 8)
    trimmer.after_batch(4, 8)
    assert trimmer.trims == 1 and 0 < trimmer.due_in() <= 0.2
    time.sleep(0.25)
    assert trimmer.due_in() == 0
    trimmer.idle()
    assert trimmer.trims == 2 and trimmer.due_in() is None


def test_hung_up_and_refused_requests_leave_no_cycles_holding_their_work():
    """A cancelled or refused request's frames (its texts, its tokenized windows) are freed when it ends, not at the
    garbage collector's next full collection (rare with a big heap; the tokenizer's memory is invisible to it)."""
    import asyncio
    import gc
    import threading

    import httpx
    import uvicorn
    from test_runtime_predictor import tiny_bundle

    from benchmarks import attacks
    from headreg.runtime import Predictor
    from headreg.runtime.engine import Job
    from headreg.serve.app import ServeConfig, create_app, listen

    # one row per batch: the windows of a request take seconds, so the client hangs up on work in progress
    app = create_app({"seq_cls": Predictor(tiny_bundle("seq_cls"))}, ServeConfig(max_batch_size=1))
    sock = listen("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def metric(name: str) -> float:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
        raise AssertionError(name)

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:  # not listening yet
                pass
            time.sleep(0.1)
        gc.collect()
        # A busy server's requests outlive several young collections and reach the old generation, which is
        # collected rarely; here, no collection at all until the end shows whatever a cycle would keep.
        gc.disable()
        heavy = attacks.predict_body(["word " * 20_000] * 2, long_text="window")
        refused = {"inputs": ["word " * 2_000], "parameters": {"long_text": "window", "max_windows": 3}}

        async def attack() -> None:
            await asyncio.gather(*(attacks.hang_up(sock.getsockname()[1], "/v1/models/seq_cls/predict", heavy,
                                                   after=0.3) for _ in range(3)))

        asyncio.run(asyncio.wait_for(attack(), 60))
        assert httpx.post(f"{url}/v1/models/seq_cls/predict", json=refused).status_code == 422
        while time.monotonic() < deadline and metric('headreg_queue_rows{model="seq_cls"}') > 0:
            time.sleep(0.1)
        assert metric("headreg_client_disconnects_total") >= 1
        time.sleep(0.5)  # the batch that ran when the last client left
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            held = [obj for obj in gc.garbage if isinstance(obj, (Job, asyncio.CancelledError))
                    or type(obj).__name__ == "frame" and "headreg/serve" in obj.f_code.co_filename]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert held == []
    finally:
        gc.enable()
        server.should_exit = True
        thread.join(30)


def test_a_batch_at_the_attention_cap_makes_a_trim_owed():
    """The batcher never runs a batch of more cells than ATTENTION_CELLS: a trim threshold above it would never
    be met by windowed traffic, and the server would keep its freed memory until it goes idle with one owed."""
    from headreg.serve.memory import ATTENTION_CELLS, TRIM_AT

    assert TRIM_AT <= ATTENTION_CELLS
    trimmer = Trimmer(min_interval=0.0)
    if not trimmer.active:
        pytest.skip("malloc_trim is glibc's")
    rows = max(ATTENTION_CELLS // 256**2, 1)
    trimmer.after_batch(rows, 256)  # the biggest batch of 256-token windows the batcher runs
    assert trimmer.trims == 1


def test_each_workers_full_batch_makes_a_trim_owed():
    """With N model workers each batch holds 1/N of the attention budget: the batcher's trimmer must be met by
    such a batch, or windowed traffic on a multi-worker server would never hand its freed memory back."""
    from test_runtime_predictor import tiny_bundle

    from headreg.runtime import Predictor
    from headreg.serve.batcher import Batcher

    predictor = Predictor(tiny_bundle("seq_cls"), threads=1)
    for workers in (1, 2, 4):
        batcher = Batcher("m", predictor, max_batch_tokens=2048, max_batch_size=64, trim_memory=True, workers=workers)
        assert batcher.trimmer.threshold <= batcher.max_batch_cells, workers


def test_an_owed_trim_for_freed_tokenizing_waits_a_moment_then_runs_when_idle():
    trimmer = Trimmer(min_interval=0.0)
    if not trimmer.active:
        pytest.skip("malloc_trim is glibc's")
    from headreg.serve.memory import OWED_DELAY

    assert trimmer.owe() and 0 < trimmer.due_in() <= OWED_DELAY  # the request's frames go first
    trimmer.idle()
    assert trimmer.trims == 0
    time.sleep(OWED_DELAY + 0.05)
    assert trimmer.due_in() == 0
    trimmer.idle()
    assert trimmer.trims == 1 and trimmer.due_in() is None
    assert not Trimmer(enabled=False).owe()


@pytest.mark.slow
def test_tokenizing_abandoned_by_its_clients_is_handed_back_once_idle(tmp_path):
    """Requests whose clients leave while their windows are being cut never reach a batch, so no batch makes a
    trim owed: each (~0.9 GB of windows here) is freed where it was tokenized and trimmed. The code before this
    kept +2.6 GB in the idle server."""
    import asyncio

    from test_runtime_predictor import tiny_bundle
    from test_serve import Server

    from benchmarks import attacks

    if not Trimmer().active:
        pytest.skip("malloc_trim is glibc's")

    def rss_mb(pid: int) -> float:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

    server = Server(tmp_path, f"seq_cls={tiny_bundle('seq_cls')}")
    try:
        before = rss_mb(server.process.pid)
        # 128 texts of ~7,600 tokens, each in 254 windows of 128 tokens (the most --max-windows allows)
        body = attacks.predict_body(["a " * 7600] * 128, long_text="window", window_stride=96)

        async def leave() -> None:
            await asyncio.gather(*(attacks.hang_up(server.port, "/v1/models/seq_cls/predict", body, after=1.0)
                                   for _ in range(3)))

        asyncio.run(asyncio.wait_for(leave(), 60))
        deadline, peak, now = time.monotonic() + 60, 0.0, rss_mb(server.process.pid)
        while time.monotonic() < deadline and (now > before + 200 or peak < before + 300):
            time.sleep(0.25)
            now = rss_mb(server.process.pid)
            peak = max(peak, now)
        assert peak >= before + 300, "the requests were tokenized (what this test is about)"
        assert now <= before + 200, (before, peak, now)
    finally:
        assert server.stop() == 0
