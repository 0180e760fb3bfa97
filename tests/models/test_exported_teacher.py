"""A user's own nn.Module, saved with torch.export, works as a teacher: loaded without pickle,
its parts found through forward hooks, scored by DisWOT."""
from __future__ import annotations

import math

import torch
from torch import nn

from kdsearch.models.features import locate_parts
from kdsearch.spaces.model_files import load_teacher


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.body(x)), 1))


def test_pt2_teacher_is_loaded_hooked_and_scored(tmp_path):
    from kdsearch.models.resnet_cifar import ResNetCifar
    from kdsearch.proxies import create_proxy, teacher_stats

    torch.manual_seed(0)
    net = UserNet().eval()
    program = torch.export.export(net, (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    path = tmp_path / "teacher.pt2"
    torch.export.save(program, str(path))

    teacher = load_teacher(str(path), num_classes=10, in_channels=1, image_size=(28, 28))
    assert teacher.trained is None  # an opaque file: kdsearch cannot tell
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(teacher.module(x), net(x), atol=1e-5)
    parts = locate_parts(teacher.module, x)
    assert parts.classifier == "head"
    assert parts.feature.startswith("body")
    batch = (x, torch.arange(16) % 10)
    proxy = create_proxy("diswot")
    stats = teacher_stats({"diswot": proxy}, teacher.module, batch, parts)
    student = ResNetCifar([1, 1, 1], [8, 8, 16], num_classes=10, in_channels=1)
    score = proxy.score(student, batch, stats["diswot"])
    assert math.isfinite(score) and score <= 0


def test_torchscript_teacher_is_cut_into_hookable_parts_and_scores_like_the_module(torchscript_teacher):
    from kdsearch.models.graph_teacher import GraphTeacher
    from kdsearch.models.resnet_cifar import ResNetCifar
    from kdsearch.proxies import create_proxy, teacher_stats

    net, path = torchscript_teacher()
    teacher = load_teacher(path, num_classes=10, in_channels=1, image_size=(28, 28))
    assert isinstance(teacher.module, GraphTeacher) and teacher.trained is None
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(teacher.module(x), net(x), atol=1e-5)
        assert torch.allclose(teacher.module(x[:1]), net(x[:1]), atol=1e-5)  # the batch size is not baked in
    assert sum(p.numel() for p in teacher.module.parameters()) == sum(p.numel() for p in net.parameters())
    parts = locate_parts(teacher.module, x)
    assert (parts.feature, parts.classifier) == ("body", "classifier")
    batch = (x, torch.arange(16) % 10)
    student = ResNetCifar([1, 1, 1], [8, 8, 16], num_classes=10, in_channels=1)
    scores = []
    for module, where in ((teacher.module, parts), (net, locate_parts(net, x))):
        proxy = create_proxy("diswot")
        stats = teacher_stats({"diswot": proxy}, module, batch, where)
        scores.append(proxy.score(student, batch, stats["diswot"]))
    assert math.isfinite(scores[0]) and math.isclose(scores[0], scores[1], rel_tol=1e-4)


def test_torchscript_that_does_not_end_in_logits_warns_and_search_says_why(tmp_path, torchscript_teacher, scale, cli,
                                                                           fashion_npz):
    import pytest

    from kdsearch.errors import KdsearchWarning

    _, path = torchscript_teacher(scale(2.0))
    with pytest.warns(KdsearchWarning, match="cannot read its features"):
        teacher = load_teacher(path, num_classes=10, in_channels=1, image_size=(28, 28))
    assert isinstance(teacher.module, torch.jit.ScriptModule)  # still usable for its logits
    code, out, err = cli("search", "--teacher", path, "--data", f"npz:{fashion_npz}", "--subset", "64",
                         "--trials", "2", "--max-params", "200000", "--out", tmp_path / "s", "--quiet")
    assert code != 0 and "TorchScript" in err and "Traceback" not in err


def test_search_runs_against_a_torchscript_teacher(tmp_path, torchscript_teacher, cli, fashion_npz):
    import json

    _, path = torchscript_teacher()
    code, out, err = cli("search", "--teacher", path, "--data", f"npz:{fashion_npz}", "--subset", "64", "--trials", "3",
                         "--population", "2", "--proxy-batch", "8", "--max-params", "200000", "--out", tmp_path / "s",
                         "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["trials"] == 3


def test_opaque_teachers_can_be_reinitialised(tmp_path, torchscript_teacher):
    torch.manual_seed(0)
    net = UserNet().eval()
    program = torch.export.export(net, (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "t.pt2"))
    for spec in (str(tmp_path / "t.pt2"), torchscript_teacher()[1]):
        teacher = load_teacher(spec, num_classes=10, in_channels=1, image_size=(28, 28))
        a, b, c = teacher.fresh_copy(1), teacher.fresh_copy(1), teacher.fresh_copy(2)
        before = dict(teacher.module.state_dict())
        for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
            assert p.shape == before[name].shape and torch.equal(p, q), name  # same seed, same weights
            if p.dim() >= 2:
                assert not torch.equal(p, before[name]) and not torch.equal(p, r), name
        assert torch.equal(next(iter(teacher.module.state_dict().values())), next(iter(before.values())))  # original kept
        x = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            assert a.eval()(x).shape == (4, 10)
