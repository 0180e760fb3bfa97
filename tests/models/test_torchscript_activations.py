"""TorchScript teachers whose logits go through an activation (a common export: ReLU or softmax
last) are cut at their final linear layer and score with both teacher initialisations."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from kdsearch.errors import KdsearchWarning
from kdsearch.models.features import FeatureTap, locate_parts
from kdsearch.models.graph_teacher import GraphTeacher
from kdsearch.spaces.model_files import load_teacher

ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "softmax": lambda: nn.Softmax(dim=1)}


def _load(path: str):
    return load_teacher(path, num_classes=10, in_channels=1, image_size=(28, 28))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activated_torchscript_is_cut_at_its_final_linear_layer(torchscript_teacher, activation):
    net, path = torchscript_teacher(ACTIVATIONS[activation]())
    with warnings.catch_warnings():
        warnings.simplefilter("error", KdsearchWarning)  # cut, not a logits-only fallback
        teacher = _load(path)
    assert isinstance(teacher.module, GraphTeacher)
    x = torch.randn(8, 1, 28, 28)
    parts = locate_parts(teacher.module, x)
    assert (parts.feature, parts.classifier) == ("body", "classifier")
    with torch.no_grad(), FeatureTap(teacher.module, [parts.classifier]) as tap:
        out = teacher.module(x)
        assert torch.allclose(out, net(x), atol=1e-5)  # the file's output, activation included
        assert torch.allclose(tap[parts.classifier], net.fc(net.features(x).mean((2, 3))), atol=1e-5)  # pre-activation


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_random_init_gives_a_torchscript_teacher_fresh_weights(torchscript_teacher, activation):
    teacher = _load(torchscript_teacher(ACTIVATIONS[activation]())[1])
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", KdsearchWarning)
        fresh, again = teacher.fresh_copy(3), teacher.fresh_copy(3)
    assert isinstance(fresh, GraphTeacher)
    for name, w in fresh.state_dict().items():
        assert torch.equal(w, again.state_dict()[name]), name  # the same seed, the same teacher
        if w.dim() >= 2:
            assert not torch.equal(w, before[name]), name
    for name, w in teacher.module.state_dict().items():
        assert torch.equal(w, before[name]), name  # the loaded teacher is untouched
    scores = [_diswot(module) for module in (teacher.module, fresh)]
    assert all(math.isfinite(s) for s in scores) and scores[0] != scores[1]


def _diswot(teacher: nn.Module) -> float:
    from kdsearch.models.resnet_cifar import ResNetCifar
    from kdsearch.proxies import create_proxy, teacher_stats

    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    batch = (x, torch.arange(16) % 10)
    proxy = create_proxy("diswot")
    stats = teacher_stats({"diswot": proxy}, teacher, batch, locate_parts(teacher, x))
    return proxy.score(ResNetCifar([1, 1, 1], [8, 8, 16], num_classes=10, in_channels=1), batch, stats["diswot"])


def test_frozen_torchscript_keeps_its_weights_with_one_warning(torchscript_teacher):
    net, path = torchscript_teacher(nn.ReLU(), freeze=True)
    teacher = _load(path)
    assert isinstance(teacher.module, GraphTeacher)
    with pytest.warns(KdsearchWarning, match="frozen into the graph") as record:
        fresh = teacher.fresh_copy(3)
    assert len([w for w in record if issubclass(w.category, KdsearchWarning)]) == 1
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(fresh(x), net(x), atol=1e-5)  # pretrained, as the warning says


@pytest.mark.parametrize("init", ["random", "pretrained"])
@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_score_command_runs_against_an_activated_torchscript_teacher(torchscript_teacher, cli, fashion_npz, activation,
                                                                    init):
    _, path = torchscript_teacher(ACTIVATIONS[activation]())
    code, out, err = cli("score", "--teacher", path, "--data", f"npz:{fashion_npz}", "--subset", "64", "--space",
                         "resnet_cifar", "--sample", "2", "--proxy", "diswot", "--proxy-batch", "16",
                         "--teacher-init", init, "--quiet", "--json")
    assert code == 0, err
    assert "warning" not in err.lower()
    results = json.loads(out)
    assert len(results) == 2 and all(math.isfinite(r["scores"]["diswot"]) for r in results)
