"""``--space pruned``: students cut from the user's teacher, searched, distilled from its weights,
exported and quantized; a teacher changed since, or one with nothing to cut, refused in one line."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.rundir import RunDir
from kdsearch.spaces import load_space

pytestmark = pytest.mark.slow

SEARCH = ("--subset", "256", "--trials", "3", "--population", "3", "--proxy-batch", "16", "--quiet")
TRAIN = ("--epochs", "1", "--batch-size", "32", "--quiet")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread beats two on a shared two-core machine, by far when another job runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _search(cli, fashion_npz, teacher, out, *flags):
    return cli("search", "--teacher", teacher, "--data", f"npz:{fashion_npz}", "--space", "pruned", "--out", out,
               *SEARCH, *flags)


def _save_pt2(net: nn.Module, path) -> None:
    batch = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(net.eval(), (torch.zeros(2, 1, 28, 28),), dynamic_shapes=batch), str(path))


def _pruned_chain(cli, fashion_npz, teacher, run) -> dict:
    """search --space pruned → distill → export; the student record."""
    code, _, err = _search(cli, fashion_npz, teacher, run)
    assert code == 0, err
    space = load_space(RunDir(run).searched_space)
    assert space.family == "pruned" and space.param_names()[0] == "keep_0"
    code, _, err = cli("distill", run, *TRAIN)
    assert code == 0, err
    code, _, err = cli("export", run, "--latency-runs", "3", "--quiet")
    assert code == 0, err
    assert (RunDir(run).export / "student.onnx").is_file()
    return json.loads(RunDir(run).student_json.read_text())


def test_search_distill_export_quantize_a_pruned_zoo_teacher(cli, fashion_npz, tmp_path):
    run = tmp_path / "run"
    student = _pruned_chain(cli, fashion_npz, "resnet8", run)
    prune = student["space"]["prune"]
    assert student["family"] == "pruned" and prune["teacher"] == "resnet8"
    assert student["init"] == {"mode": "pruned", "teacher": "resnet8", "teacher_sha256": prune["teacher_sha256"]}
    assert set(student["arch"]["genes"]) == {"keep", "remove"}  # resnet8 has a block it can drop
    assert len(student["arch"]["genes"]["keep"]) == len(prune["groups"])
    winner = json.loads(RunDir(run).winner.read_text())
    assert winner["arch"] == student["arch"]
    code, _, err = cli("quantize", run, *TRAIN)
    assert code == 0, err


def test_run_chains_a_pruned_search(cli, fashion_npz, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("run", "--preset", "tiny", "--space", "pruned", "--teacher", "resnet8", "--data",
                            f"npz:{fashion_npz}", "--out", out, "--quiet", "--json")
    assert code == 0, err
    assert json.loads(stdout)["student"]["arch"]["space"] == "pruned"
    assert json.loads(RunDir(out).student_json.read_text())["init"]["mode"] == "pruned"


def test_init_random_gives_a_pruned_student_fresh_weights(cli, fashion_npz, tmp_path):
    run = tmp_path / "run"
    code, _, err = _search(cli, fashion_npz, "resnet8", run)
    assert code == 0, err
    code, _, err = cli("distill", run, *TRAIN, "--init", "random", "--out", tmp_path / "fresh")
    assert code == 0, err
    init = json.loads(RunDir(tmp_path / "fresh").student_json.read_text())["init"]
    assert init["mode"] == "random" and init["pruned_from"]["teacher"] == "resnet8"


def test_a_pruned_student_starts_from_its_teachers_weights(fashion_npz):
    from kdsearch.arch import Arch
    from kdsearch.spaces import pruned_space
    from kdsearch.spaces.model_files import load_teacher

    teacher = load_teacher("resnet8", num_classes=10, in_channels=1, image_size=(28, 28))
    space = pruned_space(teacher, num_classes=10, in_channels=1, image_size=(28, 28))
    whole = space.build(space.teacher((28, 28)), num_classes=10, in_channels=1)
    for name, tensor in teacher.module.state_dict().items():
        assert torch.equal(whole.state_dict()[name], tensor), name
    half = Arch("pruned", {"keep": [0.5] * len(space.groups), "remove": [False] * len(space.blocks)}, "cifar")
    cut = space.build(half, num_classes=10, in_channels=1)
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in whole.parameters())
    # built inside a meta-device context (the search's parameter counts), it is still cut from real weights
    with torch.device("meta"):
        counted = space.build(half, num_classes=10, in_channels=1)
    assert torch.equal(counted.classifier.weight, cut.classifier.weight)
    # --init random: the same cut shape, fresh weights, the same for the same seed
    from kdsearch.distill.stage import start_student

    fresh, again = (space.build(half, num_classes=10, in_channels=1) for _ in range(2))
    assert start_student(fresh, space, teacher, "random", seed=3)["mode"] == "random"
    start_student(again, space, teacher, "random", seed=3)
    assert not torch.equal(fresh.classifier.weight, cut.classifier.weight)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values()))


def test_a_pruned_search_times_candidates_whole_under_a_speedup_budget(cli, fashion_npz, tmp_path):
    run = tmp_path / "fast"
    code, _, err = _search(cli, fashion_npz, "resnet8", run, "--speedup", "1.2")
    assert code == 0, err
    assert RunDir(run).speed.is_file()  # the budget was timed
    from kdsearch.export.latency_model import default_cache_dir

    tables = [json.loads(p.read_text()) for p in default_cache_dir().glob("pruned-*.json")]
    assert tables and all(t["whole"] and not t["parts"] for t in tables)  # a cut teacher is timed whole


def test_a_teacher_changed_since_the_search_is_refused_in_one_line(cli, fashion_npz, tmp_path):
    from safetensors.torch import load_file, save_file

    teacher = tmp_path / "teacher"
    code, _, err = cli("teach", "--model", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "128",
                       "--out", teacher, *TRAIN)
    assert code == 0, err
    run = tmp_path / "run"
    student = _pruned_chain(cli, fashion_npz, teacher, run)
    assert student["space"]["prune"]["teacher"] == str(teacher.resolve())
    assert student["space"]["prune"]["blocks"] == ["layer1.0"]  # found in the program's restored module hierarchy
    weights = teacher / "model.safetensors"
    state = load_file(str(weights))
    state["classifier.bias"] = state["classifier.bias"] + 1
    save_file(state, str(weights))
    for command in (("export", run, "--quiet"), ("quantize", run, *TRAIN), ("distill", run, *TRAIN, "--force")):
        code, _, err = cli(*command)
        assert code != 0, command
        line = _one_line(err)
        assert "has changed since the pruned space was made from it" in line and str(teacher.resolve()) in line
    assert RunDir(run).student_weights.is_file()  # refused before --force cleared the distilled student


def _linear_pt2(path):
    _save_pt2(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), path)  # its one layer makes the logits


class _FrozenConv(nn.Module):
    """A conv and a linear layer whose weights are constants of the graph (torch.jit.freeze): nothing to cut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def _frozen_torchscript(path):
    torch.jit.save(torch.jit.freeze(torch.jit.script(_FrozenConv().eval())), str(path))


@pytest.mark.parametrize("name, save, message", [
    ("linear.pt2", _linear_pt2, "finds no channel group it can cut"),
    ("frozen.pt", _frozen_torchscript, "its weights are frozen into its graph (torch.jit.freeze)"),
])
def test_a_teacher_it_cannot_cut_is_refused_in_one_line_and_leaves_nothing(cli, fashion_npz, tmp_path, name, save,
                                                                           message):
    teacher = tmp_path / name
    save(teacher)
    out = tmp_path / "never"
    code, _, err = _search(cli, fashion_npz, teacher, out)
    assert code != 0
    assert message in _one_line(err)
    assert not out.exists()


def test_a_run_without_a_teacher_cuts_its_students_from_the_teacher_it_trains(cli, fashion_npz, tmp_path):
    out, untimed = tmp_path / "run", tmp_path / "untimed.yaml"
    untimed.write_text("search: {speedup: null}\n")  # no speed budget: no prunings to time whole
    code, stdout, err = cli("run", "--preset", "tiny", "--config", untimed, "--space", "pruned", "--data",
                            f"npz:{fashion_npz}", "--out", out, "--quiet", "--json")
    assert code == 0, err
    run = RunDir(out)
    trained = str(run.teacher.resolve())
    space = load_space(run.searched_space)
    assert space.family == "pruned" and space.prune["teacher"] == trained  # not the untrained stand-in
    student = json.loads(run.student_json.read_text())
    assert student["init"] == {"mode": "pruned", "teacher": trained, "teacher_sha256": space.prune["teacher_sha256"]}
    assert json.loads(stdout)["student"]["arch"]["space"] == "pruned"


def test_search_distill_export_a_pruned_pt2_teacher(cli, fashion_npz, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ResNetCifar([1, 1, 1], [8, 16, 16], in_channels=1)
    teacher = tmp_path / "teacher.pt2"
    _save_pt2(net, teacher)
    run = tmp_path / "run"
    student = _pruned_chain(cli, fashion_npz, teacher, run)
    assert student["space"]["prune"]["teacher"] == str(teacher.resolve())
    assert student["space"]["prune"]["blocks"] == ["layer1.0"]  # found in the program's restored module hierarchy
    # the run travels: a copy reloads its student from the same teacher file
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, _, err = cli("export", copy, "--latency-runs", "3", "--quiet")
    assert code == 0, err


def test_search_distill_export_a_pruned_torchscript_teacher(cli, fashion_npz, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ResNetCifar([1, 1, 1], [8, 16, 16], in_channels=1).eval()
    teacher = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(2, 1, 28, 28)), str(teacher))
    run = tmp_path / "run"
    student = _pruned_chain(cli, fashion_npz, teacher, run)
    assert student["space"]["prune"]["teacher"] == str(teacher.resolve())
    assert student["space"]["prune"]["blocks"] == ["layer1.0"]  # its module hierarchy survives the conversion
    code, _, err = cli("quantize", run, *TRAIN)
    assert code == 0, err
    with torch.no_grad():
        net.classifier.bias.add_(1)
    torch.jit.save(torch.jit.trace(net, torch.zeros(2, 1, 28, 28)), str(teacher))
    code, _, err = cli("export", run, "--quiet")
    assert code != 0
    assert "has changed since the pruned space was made from it" in _one_line(err)
