"""Where a job's CPU went: this process and its descendants (a private Ray cluster's GCS, raylet, agents and
workers), read from ``/proc`` and grouped by what each process is.

A worker's title (``ray::MapWorker(MapBatches(ModelStage))``, ``ray::_StatsActor``, ``ray::IDLE``) says what it runs;
workers that exited are counted through their parent's reaped-children time (``cutime`` / ``cstime``, the raylet's for
Ray's workers). Linux only: :func:`snapshot` returns ``None`` elsewhere.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

RAY_DATA_HELPERS = ("_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker")
"""Actors Ray Data creates on a cluster's first dataset (a warm cluster already has them)."""

GROUPS = ("model actors", "Ray Data's helper actors", "task workers", "Ray's own processes", "this process",
          "exited processes")


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds at one moment: ``own[pid] = (group, seconds)`` for this process and each live descendant, and the
    reaped-children seconds of each (processes that already exited)."""

    own: dict[int, tuple[str, float]]
    reaped: dict[int, float]
    taken: float


def _group(pid: int, title: str) -> str:
    if pid == os.getpid():
        return "this process"
    if "ModelStage" in title:
        return "model actors"
    if any(name in title for name in RAY_DATA_HELPERS):
        return "Ray Data's helper actors"
    if title.startswith("ray::"):
        return "task workers"
    return "Ray's own processes"


def _stat(pid: str) -> tuple[int, float, float] | None:
    """(parent pid, own CPU s, reaped children's CPU s) of ``pid``, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks


def cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid`` has used so far (all its threads), or NaN once it is gone or without ``/proc``."""
    stat = _stat(str(pid))
    return stat[1] if stat is not None else float("nan")


def snapshot() -> Snapshot | None:
    """This process and every live descendant, or None without ``/proc``."""
    if not Path("/proc/self/stat").exists():
        return None
    stats: dict[int, tuple[int, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            stats[int(entry.name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (parent, _own, _reaped) in stats.items():
        children.setdefault(parent, []).append(pid)
    own: dict[int, tuple[str, float]] = {}
    reaped: dict[int, float] = {}
    pending = [os.getpid()]
    while pending:
        pid = pending.pop()
        if pid not in stats:
            continue
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        own[pid] = (_group(pid, title), stats[pid][1])
        reaped[pid] = stats[pid][2]
        pending.extend(children.get(pid, ()))
    return Snapshot(own, reaped, time.monotonic())


def usage(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per group between two snapshots (a process new in ``after`` counts whole)."""
    totals = dict.fromkeys(GROUPS, 0.0)
    for pid, (group, seconds) in after.own.items():  # a worker that changed title since counts in its new group
        previous = before.own.get(pid)
        totals[group] += seconds - (previous[1] if previous else 0.0)
    # a reaped child's time counts whole in its parent's; what it used before ``before`` was counted then
    gone = sum(seconds for pid, (_group, seconds) in before.own.items() if pid not in after.own)
    reaped = sum(after.reaped.values()) - sum(before.reaped.get(pid, 0.0) for pid in after.reaped)
    totals["exited processes"] = max(0.0, reaped - gone)
    return totals


def describe(before: Snapshot | None, after: Snapshot | None) -> str:
    """One line: the CPU seconds of each group, their sum, and how busy that kept the machine's cores."""
    if before is None or after is None:
        return "(no /proc here: CPU per process not measured)"
    totals = usage(before, after)
    wall = after.taken - before.taken
    cpu = sum(totals.values())
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in totals.items() if seconds >= 0.05)
    return f"{cpu:.1f} CPU s in {wall:.1f} s on {cores} cores ({cpu / (wall * cores):.0%} busy): {parts}"
