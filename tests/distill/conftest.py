"""One intra-op thread for the distillation tests.

The suite runs on two shared cores: with two OpenMP threads a busy machine makes each
tiny training step wait for a descheduled sibling thread (measured here: 11 s instead of
0.2 s for one small epoch), so these tests use one thread and give the default back.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
