"""The bad-input catalogue: each case is one line naming the problem and the fix, a non-zero
exit (2 usage, 1 runtime), no traceback, and nothing half-written."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.spaces.model_files import save_model_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory, fashion_npz):
    """Good and broken inputs, made once."""
    d = tmp_path_factory.mktemp("inputs")
    good_teacher = d / "teacher"
    save_model_dir(good_teacher, ResNetCifar([1, 1, 1], [8, 8, 16], num_classes=10, in_channels=1), num_classes=10,
                   in_channels=1, model_name="resnet8")
    # resnet8 genes differ from what the weights hold: use an arch that matches the weights instead
    meta = json.loads((good_teacher / "model.json").read_text())
    meta.update(model=None, arch={"space": "resnet_cifar", "genes": {"depths": [1, 1, 1], "widths": [8, 8, 16], "block": "basic"}},
                family="resnet_cifar")
    (good_teacher / "model.json").write_text(json.dumps(meta))

    def teacher_variant(name: str, **changes):
        p = d / name
        p.mkdir()
        for f in good_teacher.iterdir():
            (p / f.name).write_bytes(f.read_bytes())
        m = json.loads((p / "model.json").read_text())
        m.update(changes)
        (p / "model.json").write_text(json.dumps(m))
        return p

    hundred = d / "teacher100"
    save_model_dir(hundred, ResNetCifar([1, 1, 1], [8, 8, 16], num_classes=100, in_channels=1), num_classes=100,
                   in_channels=1, arch=None, model_name=None)
    m = json.loads((hundred / "model.json").read_text())
    m.update(arch=meta["arch"], family="resnet_cifar")
    (hundred / "model.json").write_text(json.dumps(m))
    rgb = d / "teacher_rgb"
    save_model_dir(rgb, ResNetCifar([1, 1, 1], [8, 8, 16], num_classes=10, in_channels=3), num_classes=10, in_channels=3)
    m = json.loads((rgb / "model.json").read_text())
    m.update(arch=meta["arch"], family="resnet_cifar")
    (rgb / "model.json").write_text(json.dumps(m))

    corrupt_weights = teacher_variant("corrupt_weights")
    (corrupt_weights / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    bad_json = teacher_variant("bad_json")
    (bad_json / "model.json").write_text("{not json")
    unknown_key = teacher_variant("unknown_key", colour="blue")

    evil = d / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    evil.write_bytes(pickle.dumps(Evil()))
    garbage_ts = d / "garbage.pt"
    garbage_ts.write_bytes(b"PK\x03\x04 not a zip")
    text = d / "notes.txt"
    text.write_text("hello")
    arch_ok = {"space": "resnet_cifar", "genes": {"depths": [1, 1, 1], "widths": [8, 8, 16], "block": "basic"}}
    arches = {}
    for name, content in {
        "corrupt": "{oops",
        "unknown": json.dumps({**arch_ok, "extra": 1}),
        "outside": json.dumps({"space": "resnet_cifar", "genes": {"depths": [1, 1, 1], "widths": [8, 8, 16], "block": "dense"}}),
        "types": json.dumps({"space": "resnet_cifar", "genes": "deep"}),
        "ok": json.dumps(arch_ok),
    }.items():
        arches[name] = d / f"arch_{name}.json"
        arches[name].write_text(content)
    yamls = {}
    for name, content in {
        "corrupt": "name: [unclosed",
        "unknown": "name: x\nfamily: resnet_cifar\ncolour: blue\ngenes: {}\nteacher: {}\n",
        "python": "!!python/object/apply:os.system ['touch " + str(d / "PWNED2") + "']\n",
        "empty_choices": ("name: x\nfamily: resnet_cifar\ngenes:\n  depths: {choices: [], length: 3}\n"
                          "  widths: {choices: [8], length: 3}\n  block: {choices: [basic]}\n"
                          "teacher: {depths: [1,1,1], widths: [8,8,8], block: basic}\n"),
        "config_unknown": "search: {trials: 3, colour: blue}\n",
        "config_types": "search: {trials: many}\n",
        "config_cuda_timing": "search: {latency_provider: cuda}\n",
    }.items():
        yamls[name] = d / f"{name}.yaml"
        yamls[name].write_text(content)
    empty_dir = d / "empty_images"
    empty_dir.mkdir()
    few = d / "few.npz"  # 24 images of 10 classes: a 10% validation split of each class rounds to nothing
    with np.load(fashion_npz) as arrays:
        np.savez(few, x=arrays["x"][:24], y=arrays["y"][:24])
    existing = d / "existing_run"
    existing.mkdir()
    (existing / "run.yaml").write_text("{}\n")
    readonly = d / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    a_file = d / "a_file"
    a_file.write_text("x")
    return {
        "d": d, "npz": f"npz:{fashion_npz}", "teacher": good_teacher, "hundred": hundred, "rgb": rgb,
        "corrupt_weights": corrupt_weights, "bad_json": bad_json, "unknown_key": unknown_key, "evil": evil,
        "garbage_ts": garbage_ts, "text": text, "arch": arches, "yaml": yamls, "empty_dir": empty_dir,
        "existing": existing, "readonly": readonly, "a_file": a_file, "few": f"npz:{few}",
    }


def _search(f, *extra, out=None):
    out = out or f["d"] / "out_never_written"
    return ["search", "--teacher", str(f["teacher"]), "--data", f["npz"], "--out", str(out), "--trials", "2",
            "--proxy-batch", "8", "--max-params", "100000", "--quiet", *map(str, extra)]


def _distill(f, student, *extra):
    return ["distill", "--teacher", str(f["teacher"]), "--student", str(student), "--data", f["npz"], "--out",
            str(f["d"] / "out_never_written"), "--epochs", "1", "--quiet", *map(str, extra)]


CASES = {
    # name: (argv builder, expected exit code, words the message must contain)
    "unknown dataset": (lambda f: _search(f)[:3] + ["--data", "imagenet-21k", "--out", str(f["d"] / "x")], 2, "Known"),
    "missing npz file": (lambda f: _search(f)[:3] + ["--data", "npz:/no/such/file.npz", "--out", str(f["d"] / "x")], None, "/no/such/file.npz"),
    "npz is a text file": (lambda f: _search(f)[:3] + ["--data", f"npz:{f['text']}", "--out", str(f["d"] / "x")], None, "notes.txt"),
    "empty image folder": (lambda f: _search(f)[:3] + ["--data", f"imagefolder:{f['empty_dir']}", "--out", str(f["d"] / "x")], None, "empty_images"),
    "subset zero": (lambda f: _search(f, "--subset", "0"), 2, "subset"),
    "subset negative": (lambda f: _search(f, "--subset", "-5"), 2, "subset"),
    "teacher path missing": (lambda f: ["search", "--teacher", "/no/such/teacher.pt2", "--data", f["npz"], "--out", str(f["d"] / "x")], 2, "does not exist"),
    "teacher wrong file type": (lambda f: ["search", "--teacher", str(f["text"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 2, ".pt2"),
    "teacher unknown zoo name": (lambda f: ["search", "--teacher", "resnet9000", "--data", f["npz"], "--out", str(f["d"] / "x")], 2, "Known"),
    "teacher model.json corrupt": (lambda f: ["search", "--teacher", str(f["bad_json"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 2, "not valid JSON"),
    "teacher model.json unknown key": (lambda f: ["search", "--teacher", str(f["unknown_key"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 2, "colour"),
    "teacher safetensors corrupt": (lambda f: ["search", "--teacher", str(f["corrupt_weights"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 1, "safetensors"),
    "teacher pickle with code": (lambda f: ["search", "--teacher", str(f["evil"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 1, "TorchScript"),
    "teacher corrupt torchscript": (lambda f: ["search", "--teacher", str(f["garbage_ts"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 1, "TorchScript"),
    "teacher class count mismatch": (lambda f: ["search", "--teacher", str(f["hundred"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 2, "100 classes"),
    "teacher channel mismatch": (lambda f: ["search", "--teacher", str(f["rgb"]), "--data", f["npz"], "--out", str(f["d"] / "x")], 2, "1-channel"),
    "student json corrupt": (lambda f: _distill(f, f["arch"]["corrupt"]), 2, "not valid JSON"),
    "student json unknown key": (lambda f: _distill(f, f["arch"]["unknown"]), 2, "extra"),
    "student genes outside space": (lambda f: _distill(f, f["arch"]["outside"]), 2, "dense"),
    "student genes wrong type": (lambda f: _distill(f, f["arch"]["types"]), 2, "genes"),
    "student file missing": (lambda f: _distill(f, f["d"] / "nope.json"), 2, "does not exist"),
    "space yaml missing": (lambda f: _search(f, "--space", f["d"] / "nope.yaml"), 2, "nope.yaml"),
    "space yaml corrupt": (lambda f: _search(f, "--space", f["yaml"]["corrupt"]), 2, "YAML"),
    "space yaml unknown key": (lambda f: _search(f, "--space", f["yaml"]["unknown"]), 2, "colour"),
    "space yaml python tag": (lambda f: _search(f, "--space", f["yaml"]["python"]), 2, "YAML"),
    "space yaml empty choices": (lambda f: _search(f, "--space", f["yaml"]["empty_choices"]), 2, "depths"),
    "config yaml unknown key": (lambda f: _search(f, "--config", f["yaml"]["config_unknown"]), 2, "colour"),
    "config yaml wrong type": (lambda f: _search(f, "--config", f["yaml"]["config_types"]), 2, "trials"),
    "impossible budget": (lambda f: _search(f, "--max-params", "10"), 2, "--max-params"),
    "trials zero": (lambda f: _search(f, "--trials", "0"), 2, "--trials"),
    "validation split empty": (lambda f: ["distill", "--teacher", str(f["teacher"]), "--student", str(f["arch"]["ok"]),
                                          "--data", f["few"], "--out", str(f["d"] / "out_never_written"), "--batch-size",
                                          "4", "--epochs", "1", "--quiet"], 2, "validation"),
    "epochs zero": (lambda f: _distill(f, f["arch"]["ok"], "--epochs", "0"), 2, "--epochs"),
    "epochs negative": (lambda f: _distill(f, f["arch"]["ok"], "--epochs", "-3"), 2, "--epochs"),
    "unknown sampler": (lambda f: _search(f, "--sampler", "annealing"), 2, "sampler"),
    "crossover prob under tpe": (lambda f: _search(f, "--sampler", "tpe", "--crossover-prob", "0.5"), 2, "--sampler evolution"),
    "mutation prob under random": (lambda f: _search(f, "--sampler", "random", "--mutation-prob", "0.1"), 2, "--sampler evolution"),
    "correlate edge nothing is near": (lambda f: ["correlate", "--teacher", str(f["teacher"]), "--data", f["npz"], "--archs", "12",
                                                 "--edges", "params=500", "--out", str(f["d"] / "x")], 2, "near the params edge"),
    "unknown race rank": (lambda f: _search(f, "--race", "3", "--race-rank", "vibes"), 2, "--race-rank"),
    "race budget not above one distillation": (lambda f: _search(f, "--race", "3", "--race-budget", "1"), 2,
                                               "must be more than 1"),
    "speed-up below 1": (lambda f: _search(f, "--speedup", "0.5"), 2, "--speedup must be at least 1"),
    "speed-up no candidate meets": (lambda f: _search(f, "--speedup", "50"), 2, "--speedup 50 (fastest sampled"),
    "speed-up on a missing provider": (lambda f: _search(f, "--speedup", "2", "--config",
                                                         f["yaml"]["config_cuda_timing"]), 2, "provider 'cuda'"),
    "unknown proxy": (lambda f: _search(f, "--proxy", "vibes"), 2, "Known"),
    "unknown loss": (lambda f: _distill(f, f["arch"]["ok"], "--loss", "kd:1,magic:2"), 2, "magic"),
    "output dir exists": (lambda f: _search(f, out=f["existing"]), 2, "--resume"),
    # root ignores permission bits, so as root use a directory no one may write into: /sys
    "output dir read-only": (lambda f: _search(f, out=(Path("/sys") if os.geteuid() == 0 else f["readonly"]) / "kdsearch-run"),
                             2, "cannot write"),
    "output path is a file": (lambda f: _search(f, out=f["a_file"]), 2, "is a file"),
    "malformed storage url": (lambda f: _search(f, "--storage", "postgres:/nonsense"), 2, "storage"),
    "unreachable postgres": (lambda f: _search(f, "--storage", "postgresql+psycopg2://postgres@127.0.0.1:1/none"), 2, "server"),
    "cuda on a cpu machine": (lambda f: _distill(f, f["arch"]["ok"], "--device", "cuda"), 2, "cuda"),
    "export of a non-run dir": (lambda f: ["export", str(f["d"])], 2, "run.yaml"),
    "absurd learning rate": (lambda f: _distill(f, f["arch"]["ok"], "--lr", "1e30", "--loss", "ce"), 1, "lower --lr"),
    "unknown option": (lambda f: ["search", "--colour", "blue"], 2, "--colour"),
}


STARTED_RUNS = {"absurd learning rate"}  # inputs were valid; training itself failed


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, files, cli):
    if case in ("cuda on a cpu machine", "speed-up on a missing provider") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    build, code_expected, words = CASES[case]
    argv = build(files)
    before = {p for p in files["d"].rglob("*")}
    code, out, err = cli(*argv)
    assert code != 0, f"{case}: exit 0\n{out}\n{err}"
    if code_expected is not None:
        assert code == code_expected, f"{case}: exit {code}: {err}"
    assert "Traceback" not in out + err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"{case}: expected one line, got:\n{err}"
    assert words.lower() in err.lower(), f"{case}: {err!r} lacks {words!r}"
    created = {p for p in files["d"].rglob("*")} - before
    if case in STARTED_RUNS:  # failed mid-run: no half-written artifact; the directory stays only to be resumed
        assert not [p for p in created if ".tmp" in p.name or p.name.startswith("student.")], sorted(map(str, created))
        out_dir = files["d"] / "out_never_written"
        if out_dir.exists():
            assert list(out_dir.rglob("last.ckpt")), "a failed run keeps its directory only when it can resume"
            import shutil

            shutil.rmtree(out_dir)
    else:
        assert not created, f"{case} left files behind: {sorted(map(str, created))}"
    assert not (files["d"] / "PWNED").exists() and not (files["d"] / "PWNED2").exists()


def test_catalogue_has_at_least_thirty_cases():
    assert len(CASES) >= 30
