"""Property-based tests: any sampled arch builds and round-trips; random argument lists never
produce a traceback."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdsearch.arch import Arch
from kdsearch.spaces import builtin_space_names, load_space

SPACES = {name: load_space(name) for name in builtin_space_names()}


@pytest.mark.parametrize("space_name", sorted(SPACES))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), channels=st.sampled_from([1, 3]), classes=st.integers(2, 12),
       size=st.sampled_from([28, 32]))
def test_sampled_arch_builds_runs_and_round_trips(space_name, seed, channels, classes, size):
    space = SPACES[space_name]
    arch = space.sample(random.Random(seed))
    space.validate(arch)
    again = Arch.from_json(arch.to_json())
    assert again == arch and again.key == arch.key
    model = space.build(again, num_classes=classes, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


WORDS = ["run", "search", "distill", "export", "teach", "score", "spaces", "proxies", "models", "report", "doctor",
         "quantize", "correlate", "--data", "--teacher", "--out", "--epochs", "--trials", "--subset", "--seed",
         "--max-params", "--device", "--json", "--resume", "--force", "--space", "--proxy", "--preset", "-q",
         "fashion-mnist", "npz:/nonexistent.npz", "resnet8", "-1", "0", "nan", "1e309", "/dev/null", "cuda",
         "--int8", "qat", "{}", "x" * 300, "☃", ""]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(WORDS) | st.text(max_size=12), max_size=6))
def test_random_cli_arguments_never_traceback(argv, cli, tmp_path_factory, monkeypatch):
    # parsing and validation run for real; loading data stops every command before real work
    import kdsearch.data
    import kdsearch.pipeline.commands
    import kdsearch.pipeline.stages
    from kdsearch.errors import DataError

    def no_data(*args, **kwargs):
        raise DataError("no data in this test")

    # every place a command reaches the data from (the pipeline imports it at module level)
    monkeypatch.setattr(kdsearch.data, "load_dataset", no_data)
    monkeypatch.setattr(kdsearch.pipeline.stages, "load_dataset", no_data)
    monkeypatch.setattr(kdsearch.pipeline.stages, "load_run_dataset", no_data)
    monkeypatch.setattr(kdsearch.pipeline.commands, "load_run_dataset", no_data)
    monkeypatch.chdir(tmp_path_factory.mktemp("cli"))
    code, out, err = cli(*argv)
    assert "Traceback" not in out + err
    assert isinstance(code, int)
