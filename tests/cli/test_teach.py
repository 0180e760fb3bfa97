"""``kdsearch teach`` prints what it trained, also for data without a test split (a photo folder, an npz without x_test)."""
from __future__ import annotations

import numpy as np


def test_teach_on_data_without_a_test_split_says_so_and_exits_zero(cli, fashion_npz, tmp_path):
    with np.load(fashion_npz) as arrays:
        no_test = tmp_path / "no_test.npz"
        np.savez(no_test, x=arrays["x"][:128], y=arrays["y"][:128])
    out = tmp_path / "teacher"
    code, stdout, err = cli("teach", "--model", "resnet8", "--data", f"npz:{no_test}", "--epochs", "1",
                            "--batch-size", "32", "--out", out, "--quiet")
    assert code == 0, err
    assert "val top-1" in stdout and "no test split" in stdout
    assert (out / "model.safetensors").is_file()
