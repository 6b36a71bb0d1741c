"""How many threads torch's CPU operators use: chosen from the cores this process may really use.

torch starts one OpenMP thread per core it sees. On a machine whose cores are shared with other
work, a team that fills every core waits at each barrier for a member the OS has descheduled, and a
run collapses: on two shared cores the demo's 100 steps took 29 s to over 200 s with two threads,
against about 16 s with one. So `auto` counts the cores this process may run on (its CPU affinity,
capped by a cgroup CPU quota where one is readable, shared among the ranks torchrun starts on this
machine), leaves one for everything else (the Python side of the loop, the OS, other programs) and
one per data worker thread, and never goes below one.

Precedence, first that is set: the `ONETRAINER_THREADS` environment variable, the config key
`training.threads` (when not `auto`), `OMP_NUM_THREADS`, then `auto`. The count is a property of the
machine and the config, never of the current load, because it can change the last bits of CPU results
and a resumed run must compute what the first one did.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from onetrainer.util.errors import UserError

ENV_VAR = "ONETRAINER_THREADS"
AUTO = "auto"

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    count: int
    reason: str
    """Where the number came from, for the progress display and logs."""

    def describe(self) -> str:
        return f"using {self.count} CPU thread{'s' if self.count != 1 else ''} ({self.reason})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_v2(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def _quota_v1(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def _ancestors(root: Path, relative: str) -> list[Path]:
    """The cgroup folder of this process and each parent up to the mount point: a quota anywhere caps it."""
    parts = [part for part in relative.split("/") if part]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota (in cores) of this process's cgroup, v2 or v1; None when there is none or it is unreadable."""
    text = _read(proc_cgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":
            mounts = [root, root / "unified"]
            candidates = [(folder, _quota_v2) for mount in mounts for folder in _ancestors(mount, relative)]
        elif "cpu" in controllers.split(","):
            mounts = [root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
            candidates = [(folder, _quota_v1) for mount in mounts for folder in _ancestors(mount, relative)]
        else:
            continue
        limits += [limit for folder, read in candidates if (limit := read(folder)) is not None]
    return min(limits) if limits else None


def usable_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _positive(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def choose_threads(
    setting: int | str = AUTO,
    *,
    workers: int = 0,
    env: Mapping[str, str] | None = None,
    cores: int | None = None,
) -> ThreadChoice:
    """The intra-op thread count for `setting` (`auto` or a number) and `workers` data threads."""
    env = os.environ if env is None else env
    if env.get(ENV_VAR, "").strip():
        value = env[ENV_VAR].strip()
        if value.lower() == AUTO:
            return _auto(workers, env, cores)
        count = _positive(value)
        if count is None:
            raise UserError(
                f"{ENV_VAR}={value!r} is not a thread count",
                where=ENV_VAR,
                hint=f"Set it to a whole number of at least 1, or to auto (or unset it: export {ENV_VAR}=).",
            )
        return ThreadChoice(count, f"{ENV_VAR}={count}")
    if setting != AUTO:
        return ThreadChoice(int(setting), f"training.threads={setting}")
    omp = _positive(env.get("OMP_NUM_THREADS", "").split(",")[0])
    if omp is not None:
        return ThreadChoice(omp, f"OMP_NUM_THREADS={omp}")
    return _auto(workers, env, cores)


def _auto(workers: int, env: Mapping[str, str], cores: int | None) -> ThreadChoice:
    available = usable_cores() if cores is None else cores
    ranks = _positive(env.get("LOCAL_WORLD_SIZE", "")) or 1
    share = max(1, available // ranks)
    count = max(1, share - workers - 1)
    per_rank = f" / {ranks} ranks" if ranks > 1 else ""
    reason = f"auto: {available} usable cores{per_rank}, {workers} data workers, 1 core left free"
    return ThreadChoice(count, reason)


def apply_threads(setting: int | str = AUTO, *, workers: int = 0) -> ThreadChoice:
    """Choose the thread count and give it to torch; call once, at the start of a command that computes."""
    import torch

    choice = choose_threads(setting, workers=workers)
    torch.set_num_threads(choice.count)
    return choice
