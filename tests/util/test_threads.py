"""The CPU thread count: from the usable cores and data workers, with config and environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetrainer.util import threads
from onetrainer.util.errors import UserError
from onetrainer.util.threads import apply_threads, cgroup_cpu_limit, choose_threads, usable_cores


@pytest.mark.parametrize(
    ("cores", "workers", "expected"),
    [(1, 0, 1), (2, 0, 1), (2, 2, 1), (4, 0, 3), (8, 2, 5), (64, 2, 61)],
)
def test_auto_leaves_a_core_free_and_one_per_data_worker(cores, workers, expected):
    choice = choose_threads("auto", workers=workers, env={}, cores=cores)
    assert choice.count == expected
    assert choice.reason == f"auto: {cores} usable cores, {workers} data workers, 1 core left free"


def test_auto_shares_the_cores_among_the_ranks_on_this_machine():
    assert choose_threads("auto", env={"LOCAL_WORLD_SIZE": "4"}, cores=16).count == 3


def test_precedence_environment_then_config_then_omp_then_auto():
    env = {"ONETRAINER_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert choose_threads(2, env=env, cores=8).count == 3
    assert choose_threads(2, env={"OMP_NUM_THREADS": "5"}, cores=8).count == 2
    assert choose_threads("auto", env={"OMP_NUM_THREADS": "5,2"}, cores=8).count == 5
    assert choose_threads("auto", env={"OMP_NUM_THREADS": ""}, cores=8).count == 7
    assert choose_threads(2, env={"ONETRAINER_THREADS": "auto", "OMP_NUM_THREADS": "5"}, cores=8).count == 7


def test_each_source_is_named():
    assert choose_threads(2, env={"ONETRAINER_THREADS": "3"}, cores=8).describe() == (
        "using 3 CPU threads (ONETRAINER_THREADS=3)"
    )
    assert choose_threads(2, env={}, cores=8).reason == "training.threads=2"
    assert choose_threads("auto", env={"OMP_NUM_THREADS": "1"}, cores=8).describe() == (
        "using 1 CPU thread (OMP_NUM_THREADS=1)"
    )


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_a_bad_environment_value_is_a_user_error(value):
    with pytest.raises(UserError) as info:
        choose_threads(env={"ONETRAINER_THREADS": value}, cores=4)
    assert info.value.exit_code == 2
    assert info.value.where == "ONETRAINER_THREADS"


def _cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc_file = tmp_path / "proc-cgroup"
    proc_file.write_text(proc)
    return root, proc_file


def test_cgroup_v2_quota_of_this_group_or_a_parent(tmp_path: Path):
    root, proc = _cgroup(
        tmp_path,
        "0::/jobs/run\n",
        {"jobs/run/cpu.max": "max 100000\n", "jobs/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"},
    )
    assert cgroup_cpu_limit(root, proc) == 1.5


def test_cgroup_v1_quota(tmp_path: Path):
    root, proc = _cgroup(
        tmp_path,
        "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n",
        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(root, proc) == 3.0


def test_no_quota_or_nothing_readable_means_no_limit(tmp_path: Path):
    root, proc = _cgroup(
        tmp_path, "1:cpu:/\n0::/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000", "cpu.max": "max"}
    )
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "none") is None


def test_usable_cores_is_the_affinity_capped_by_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "250000 100000"})
    assert usable_cores(root, proc) == 3
    assert usable_cores(tmp_path / "none", tmp_path / "none") == 8
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert usable_cores(root, proc) == 2


def test_apply_gives_the_count_to_torch(monkeypatch: pytest.MonkeyPatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("ONETRAINER_THREADS", "1")
    try:
        assert apply_threads(4).count == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
