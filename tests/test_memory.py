"""How much memory there is: the host's MemAvailable, a container's cgroup limit, and a budget
shared by the processes of one run. The cgroup files are fakes under ``tmp_path``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kdsearch.memory
from kdsearch.memory import memory_budget

CPU = torch.device("cpu")
GB = 10**9


def _v2(root: Path, path: str, limit: str, current: int, inactive: int = 0) -> None:
    (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    folder = root / path.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.max").write_text(limit + "\n")
    (folder / "memory.current").write_text(f"{current}\n")
    (folder / "memory.stat").write_text(f"anon {current - inactive}\nfile {inactive}\ninactive_file {inactive}\n")


def _v1(root: Path, path: str, limit: int, usage: int, inactive: int = 0) -> None:
    folder = root / "memory" / path.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (folder / "memory.stat").write_text(f"inactive_file 0\ntotal_rss {usage}\ntotal_inactive_file {inactive}\n")


def cgroup_room(root: Path, proc: Path) -> int | None:
    from kdsearch.memory import cgroup_room as room

    return room(root, proc)


def _proc(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "proc_self_cgroup"
    f.write_text(text)
    return f


def test_a_v2_limit_less_what_the_cgroup_holds_is_the_room(tmp_path):
    root = tmp_path / "cg"
    _v2(root, "/", "max", 0)
    _v2(root, "/box", f"{8 * GB}", 5 * GB, inactive=1 * GB)  # page cache the kernel can drop is not held
    assert cgroup_room(root, _proc(tmp_path, "0::/box\n")) == 4 * GB


def test_the_tightest_cgroup_up_the_tree_counts(tmp_path):
    root = tmp_path / "cg"
    _v2(root, "/outer", f"{3 * GB}", 2 * GB)
    _v2(root, "/outer/inner", "max", 2 * GB)
    assert cgroup_room(root, _proc(tmp_path, "0::/outer/inner\n")) == 1 * GB


def test_a_v1_limit_is_read_and_its_no_limit_number_ignored(tmp_path):
    root = tmp_path / "cg"
    _v1(root, "/", 9223372036854771712, 10 * GB)
    _v1(root, "/docker/abc", 6 * GB, 2 * GB, inactive=GB // 2)
    proc = _proc(tmp_path, "4:memory:/docker/abc\n1:cpu:/\n")
    assert cgroup_room(root, proc) == int(4.5 * GB)
    _v1(root, "/docker/abc", 9223372036854771712, 2 * GB)
    assert cgroup_room(root, proc) is None


def test_a_namespaced_cgroup_mounted_at_the_root_is_read_there(tmp_path):
    root = tmp_path / "cg"
    _v2(root, "/", f"{2 * GB}", GB)  # the container sees its own cgroup as "/" ... or a path not mounted here
    assert cgroup_room(root, _proc(tmp_path, "0::/kubepods/pod1\n")) == GB
    assert cgroup_room(root, _proc(tmp_path, "0::/\n")) == GB


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_room(tmp_path / "none", tmp_path / "missing") is None


def test_the_default_budget_respects_a_container_limit_below_the_hosts_free_memory(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    _v2(root, "/", f"{8 * GB}", 3 * GB)  # a container limited to 8 GB, 3 GB of it in use
    monkeypatch.setattr(kdsearch.memory, "_mem_available", lambda: 100 * GB)  # the host has plenty
    monkeypatch.setattr(kdsearch.memory, "_CGROUP_ROOT", root, raising=False)
    monkeypatch.setattr(kdsearch.memory, "_PROC_SELF_CGROUP", _proc(tmp_path, "0::/\n"), raising=False)
    budget = memory_budget(None, CPU)
    assert budget.nbytes == int(0.7 * 5 * GB) and "cgroup" in budget.source
    monkeypatch.setattr(kdsearch.memory, "_mem_available", lambda: 2 * GB)  # the host is the tighter one
    assert memory_budget(None, CPU).nbytes == int(0.7 * 2 * GB)


@pytest.mark.parametrize("max_memory", [None, "6GB"])
def test_processes_of_one_run_share_the_budget(monkeypatch, max_memory):
    monkeypatch.setattr(kdsearch.memory, "_mem_available", lambda: 10 * GB)
    monkeypatch.setattr(kdsearch.memory, "cgroup_room", lambda *a: None, raising=False)
    one, four = memory_budget(max_memory, CPU), memory_budget(max_memory, CPU, processes=4)
    assert four.nbytes == one.nbytes // 4 and "shared by 4 processes" in four.source


def test_allocated_counts_what_a_pass_frees_and_the_peak_does_not():
    from kdsearch.memory import estimate_step_memory, measure_peak

    def step(batch: int) -> None:
        for _ in range(3):  # three tensors in turn, each freed before the next
            x = torch.ones(batch, 250_000)  # (b, 250k) float32: 1 MB per image
            del x

    with measure_peak(CPU) as peak:
        step(2)
    assert peak.nbytes == 2 * 10**6 and peak.allocated == 6 * 10**6
    peak_line = estimate_step_memory(step, CPU)
    allocated_line = estimate_step_memory(step, CPU, allocated=True)
    assert peak_line.per_image == 10**6 and allocated_line.per_image == 3 * 10**6
