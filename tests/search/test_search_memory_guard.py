"""The proxy batch must fit in memory: measured on the teacher and a candidate before scoring;
lowered with one note when it does not fit, or the search stops before any work."""
from __future__ import annotations

import pytest
import torch

from kdsearch.data import load_dataset
from kdsearch.errors import MemoryBudgetError
from kdsearch.memory import estimate_step_memory
from kdsearch.models.zoo import create_model
from kdsearch.progress import Progress
from kdsearch.proxies.scoring import proxy_batch_that_fits


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=256, seed=0)


def _recording() -> tuple[Progress, list[str]]:
    progress, notes = Progress(), []
    progress.note = notes.append  # type: ignore[method-assign]
    return progress, notes


def _models():
    torch.manual_seed(0)
    return [create_model("resnet20", 10, 1), create_model("resnet8", 10, 1)]


def _need_at(models, data, batch: int) -> int:
    from kdsearch.data import fixed_batch

    def step_of(model):
        def step(b: int) -> None:
            model(fixed_batch(data, b, 0)[0]).float().sum().backward()
            model.zero_grad(set_to_none=True)
        return step

    return max(estimate_step_memory(step_of(m), torch.device("cpu")).at(batch) for m in models)


def test_a_batch_that_fits_is_kept_and_the_models_are_left_as_they_were(data):
    models = _models()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    progress, notes = _recording()
    assert proxy_batch_that_fits(models, data, 64, 0, max_memory="100GB", progress=progress) == 64
    assert notes == []
    for m, state in zip(models, before):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
        assert all(p.grad is None for p in m.parameters())


def test_a_batch_past_the_budget_is_lowered_with_one_note(data):
    models = _models()
    budget = int(0.5 * _need_at(models, data, 64))
    progress, notes = _recording()
    batch = proxy_batch_that_fits(models, data, 64, 0, max_memory=str(budget), progress=progress)
    assert 8 <= batch < 64
    assert len(notes) == 1 and f"on {batch} images" in notes[0]


def test_a_budget_below_a_small_batch_stops_in_one_line(data):
    with pytest.raises(MemoryBudgetError, match="proxy batch of 64") as caught:
        proxy_batch_that_fits(_models(), data, 64, 0, max_memory="1kB")
    assert "\n" not in str(caught.value)


def test_search_stops_before_any_work_when_even_a_small_proxy_batch_cannot_fit(monkeypatch, tmp_path, fashion_npz, cli):
    import kdsearch.memory

    monkeypatch.setattr(kdsearch.memory, "_mem_available", lambda: 1000)  # 700 bytes for scoring
    out = tmp_path / "s"
    code, _, err = cli("search", "--teacher", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "256",
                       "--trials", "2", "--population", "2", "--proxy-batch", "16", "--out", out, "--quiet")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "proxy batch of 16" in lines[0] and "Traceback" not in err
    assert not (out / "search" / "study.db").exists() and not (out / "study.db").exists()


def test_each_of_n_workers_gets_a_nth_of_the_budget(data):
    models = _models()
    budget = str(int(1.5 * _need_at(models, data, 64)))  # fits one process's batch of 64, not two processes'
    assert proxy_batch_that_fits(models, data, 64, 0, max_memory=budget) == 64
    assert 8 <= proxy_batch_that_fits(_models(), data, 64, 0, max_memory=budget, processes=2) < 64


def test_search_with_workers_sizes_the_proxy_batch_for_all_of_them(monkeypatch, tmp_path, fashion_npz, cli):
    import kdsearch.memory

    shared: list[int] = []
    real = kdsearch.memory.memory_budget

    def budget(max_memory, device, processes=1):
        shared.append(processes)
        return real("1kB", device, processes)  # too little for anything: the search stops before starting workers

    monkeypatch.setattr(kdsearch.memory, "memory_budget", budget)
    code, _, err = cli("search", "--teacher", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "256",
                       "--trials", "4", "--population", "2", "--workers", "3", "--out", tmp_path / "s", "--quiet")
    assert code == 2, err
    assert shared == [3] and "shared by 3 processes" in err
