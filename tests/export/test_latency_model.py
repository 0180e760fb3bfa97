"""The latency model: a per-part table, cached on disk as JSON, keyed by everything that changes latency."""
from __future__ import annotations

import copy
import json

import pytest

from kdsearch.arch import Arch
from kdsearch.errors import UsageError
from kdsearch.export import latency_model
from kdsearch.export.latency_model import LatencyModel, clock_for, default_cache_dir
from kdsearch.spaces import load_space, space_from_config

TINY = {
    "name": "tiny_resnet",
    "family": "resnet_cifar",
    "genes": {"depths": {"choices": [1, 2, 3], "length": 2}, "widths": {"choices": [4, 8], "length": 2},
              "block": {"value": "basic"}},
    "teacher": {"depths": [3, 3], "widths": [8, 8], "block": "basic"},
}
SHAPE = {"num_classes": 3, "in_channels": 1, "image_size": (8, 8)}


def tiny_space(**genes):
    config = copy.deepcopy(TINY)
    config["genes"].update(genes)
    return space_from_config(config, "tiny.yaml")


def arch(depths, widths) -> Arch:
    return Arch("tiny_resnet", {"depths": depths, "widths": widths, "block": "basic"}, "cifar")


@pytest.fixture(autouse=True)
def few_calibration_archs(monkeypatch):
    """Two whole candidates are enough to exercise the calibration; the default times more."""
    monkeypatch.setattr(latency_model, "_CALIBRATION_ARCHS", 2)


@pytest.fixture
def counted(monkeypatch):
    """Counts the sessions timed (each one is a real measurement)."""
    calls = []
    real = latency_model._time_sessions

    def counting(sessions, clock):
        calls.extend(sessions)
        return real(sessions, clock)

    monkeypatch.setattr(latency_model, "_time_sessions", counting)
    return calls


def test_table_round_trips_through_disk_and_second_load_measures_nothing(tmp_path, counted):
    space = tiny_space()
    archs = [arch([1, 1], [4, 4]), arch([3, 2], [8, 4])]
    first = LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path)
    predicted = [first.predict_ms(a) for a in archs]
    assert counted and first.path is not None and first.path.parent == tmp_path
    assert json.loads(first.path.read_text())["parts"]  # JSON, never a pickle
    counted.clear()
    second = LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path)
    assert second.path == first.path
    assert [second.predict_ms(a) for a in archs] == predicted
    assert counted == []


def test_parts_timed_lazily_are_kept_for_the_next_process(tmp_path, counted):
    space = tiny_space()
    LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path).predict_ms(arch([2, 3], [8, 8]))
    counted.clear()
    again = LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path)
    assert again.predict_ms(arch([2, 3], [8, 8])) > 0
    assert counted == []


@pytest.mark.parametrize("change", [
    {"space": {"widths": {"choices": [4, 8, 12], "length": 2}}},
    {"threads": 2},
    {"batch": 2},
    {"num_classes": 5},
    {"image_size": (12, 12)},
])
def test_anything_that_changes_latency_gives_a_new_table(tmp_path, change):
    base = LatencyModel.for_space(tiny_space(), **SHAPE, batch=1, cache_dir=tmp_path)
    args = {**SHAPE, "batch": 1, "threads": 1}
    args.update({k: v for k, v in change.items() if k != "space"})
    other = LatencyModel.for_space(tiny_space(**change.get("space", {})), **args, cache_dir=tmp_path)
    assert other.path != base.path
    assert other.path.is_file()


def test_predictions_are_positive_and_grow_with_depth(tmp_path, monkeypatch):
    """Every block a deeper arch adds adds its part's time. The times are fixed here: measured, two
    tiny models can come out in either order on a loaded machine."""
    monkeypatch.setattr(latency_model, "_time_sessions", lambda sessions, clock: {
        name: 0.1 if name == "call" else 2.0 if name.startswith("whole:") else 1.0 for name in sessions})
    model = LatencyModel.for_space(tiny_space(), **SHAPE, batch=1, cache_dir=tmp_path)
    shallow, deep = model.predict_ms(arch([1, 1], [8, 8])), model.predict_ms(arch([3, 3], [8, 8]))
    assert 0 < shallow < deep


def test_a_part_faster_than_an_empty_call_never_makes_a_deeper_arch_faster(tmp_path, monkeypatch):
    """A part timed at less than an empty session's call (toy shapes, a noisy clock) adds nothing:
    its share is clamped at zero, not subtracted from the other parts."""
    def times(sessions, clock):  # the stem (the only part fed the image's one channel) 1 ms, every other part 50 µs
        return {name: 0.1 if name == "call" else 2.0 if name.startswith("whole:") else 1.0 if shape[1] == 1 else 0.05
                for name, (_, shape) in sessions.items()}

    monkeypatch.setattr(latency_model, "_time_sessions", times)
    model = LatencyModel.for_space(tiny_space(), **SHAPE, batch=1, cache_dir=tmp_path)
    shallow, deep = model.predict_ms(arch([1, 1], [8, 8])), model.predict_ms(arch([3, 3], [8, 8]))
    assert 0 < shallow <= deep


@pytest.mark.parametrize("garbage", [b"\x80\x04\x95 not json", b'{"format": 2, "key": {}}', b"[]",
                                     b'{"format": 2, "parts": {"x": -1}}', b'{"format": 1}'])
def test_a_corrupted_table_is_ignored_and_measured_again(tmp_path, counted, garbage):
    space = tiny_space()
    path = LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path).path
    path.write_bytes(garbage)
    counted.clear()
    model = LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path)
    assert counted  # measured again
    assert model.predict_ms(arch([1, 1], [4, 4])) > 0
    assert json.loads(path.read_text())["format"] == latency_model._FORMAT == 2


def test_a_table_for_another_key_is_not_used(tmp_path, counted):
    space = tiny_space()
    path = LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path).path
    doc = json.loads(path.read_text())
    doc["key"]["batch"] = 64  # a file renamed by hand, say
    path.write_text(json.dumps(doc))
    counted.clear()
    LatencyModel.for_space(space, **SHAPE, batch=1, cache_dir=tmp_path)
    assert counted


def test_families_that_are_not_chains_are_timed_whole_and_cached(tmp_path, counted):
    space = load_space("vit")
    shape = {"num_classes": 3, "in_channels": 1, "image_size": (16, 16)}
    model = LatencyModel.for_space(space, **shape, batch=1, cache_dir=tmp_path)
    a = Arch("vit", {"patch_size": 8, "depth": 1, "heads": 1, "embed_dim": 48, "mlp_ratio": 1.0}, "cifar")
    assert model.predict_ms(a) > 0
    counted.clear()
    assert LatencyModel.for_space(space, **shape, batch=1, cache_dir=tmp_path).predict_ms(a) == model.predict_ms(a)
    assert counted == []


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "k"))
    assert default_cache_dir() == tmp_path / "k" / "latency"
    monkeypatch.delenv("KDSEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "kdsearch" / "latency"


def test_one_thread_on_the_cpu_is_timed_on_the_thread_clock():
    assert clock_for(1, "cpu") == "thread"
    assert clock_for(None, "cpu") == clock_for(2, "cpu") == clock_for(1, "cuda") == "wall"


@pytest.mark.parametrize("bad", [{"provider": "tpu"}, {"batch": 0}, {"threads": 0}])
def test_bad_settings_are_refused_in_one_line(tmp_path, bad):
    args = {**SHAPE, "batch": 1, "cache_dir": tmp_path, **bad}
    with pytest.raises(UsageError):
        LatencyModel.for_space(tiny_space(), **args)
