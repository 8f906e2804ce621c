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
