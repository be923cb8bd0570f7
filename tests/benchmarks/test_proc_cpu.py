"""benchmarks/_proc_cpu.py: the per-process CPU profile pipeline_throughput prints, on real child processes."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _proc_cpu

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n{after}"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_cpu_of_live_and_exited_children_lands_in_their_groups() -> None:
    before = _proc_cpu.snapshot()
    assert before is not None
    # a child still running when the second snapshot is taken (its title is not a Ray worker's: Ray's own group),
    # and one that exited before it (counted through this process's reaped-children time)
    live = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.4, after="import time; time.sleep(30)")])
    try:
        subprocess.run([sys.executable, "-c", BURN.format(s=0.4, after="")], check=True)
        deadline = time.monotonic() + 20
        while True:
            after = _proc_cpu.snapshot()
            assert after is not None
            if after.own.get(live.pid, ("", 0.0))[1] >= 0.4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        live.kill()
        live.wait()
    totals = _proc_cpu.usage(before, after)
    assert totals["Ray's own processes"] >= 0.35
    assert totals["exited processes"] >= 0.35
    assert totals["model actors"] == totals["task workers"] == totals["Ray Data's helper actors"] == 0.0
    line = _proc_cpu.describe(before, after)
    assert "exited processes" in line and "busy" in line


def test_worker_titles_name_their_group() -> None:
    assert _proc_cpu._group(1, "ray::MapWorker(MapBatches(ModelStage))") == "model actors"
    assert _proc_cpu._group(1, "ray::_StatsActor.update_iteration_metrics") == "Ray Data's helper actors"
    assert _proc_cpu._group(1, "ray::IDLE") == "task workers"
    assert _proc_cpu._group(1, "/usr/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=x") == \
        "Ray's own processes"


def test_a_child_seen_alive_then_reaped_is_not_counted_twice() -> None:
    before = _proc_cpu.Snapshot(own={1: ("this process", 5.0), 2: ("model actors", 8.0)}, reaped={1: 0.0}, taken=0.0)
    after = _proc_cpu.Snapshot(own={1: ("this process", 6.0)}, reaped={1: 8.5}, taken=1.0)  # 2 exited, reaped by 1
    totals = _proc_cpu.usage(before, after)
    assert totals["this process"] == 1.0 and totals["exited processes"] == 0.5 and totals["model actors"] == 0.0


def test_a_worker_that_took_on_an_actor_since_counts_only_its_new_time() -> None:
    before = _proc_cpu.Snapshot(own={7: ("task workers", 0.5)}, reaped={}, taken=0.0)  # an idle worker's imports
    after = _proc_cpu.Snapshot(own={7: ("model actors", 3.0)}, reaped={}, taken=1.0)
    totals = _proc_cpu.usage(before, after)
    assert totals["model actors"] == 2.5 and totals["task workers"] == 0.0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_cpu_seconds_counts_every_thread_of_a_process_and_nan_once_it_is_gone() -> None:
    # two threads burning 0.3 s of CPU each: kafka_throughput reads the broker's (multi-threaded) process this way
    code = ("import threading, time\n"
            "def burn():\n    end = time.thread_time() + 0.3\n    while time.thread_time() < end: pass\n"
            "threads = [threading.Thread(target=burn) for _ in range(2)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\nprint('done', flush=True)\ntime.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        assert _proc_cpu.cpu_seconds(child.pid) >= 0.55
    finally:
        child.kill()
        child.wait()
    assert math.isnan(_proc_cpu.cpu_seconds(child.pid))  # the process is gone
