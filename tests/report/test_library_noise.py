"""capture_library_noise: library chatter goes to the log file, the user's warnings to stderr."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings

import pytest

from kdsearch.errors import KdsearchWarning
from kdsearch.logs import capture_library_noise


def test_library_noise_goes_to_the_log_and_user_warnings_to_stderr(tmp_path, capfd):
    import optuna
    import torch  # noqa: F401  (torch adds its console handlers at import)

    log = tmp_path / "run" / "kdsearch.log"
    # torch gives children their own stderr handler and propagate=False: the hard case.
    child = logging.getLogger("torch.kdsearch_test_child")
    own = logging.StreamHandler(sys.stderr)
    child.addHandler(own)
    child.propagate = False
    torch_handlers = logging.getLogger("torch").handlers[:]
    try:
        with capture_library_noise(log):
            logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so: Could not load this library")
            child.warning("pytree deprecation chatter")
            logging.getLogger("onnxscript.optimizer").warning("onnxscript chatter")
            warnings.warn("experimental sampler", optuna.exceptions.ExperimentalWarning)
            warnings.warn("some library UserWarning", UserWarning)
            warnings.warn("your teacher is untrained", KdsearchWarning)
        out, err = capfd.readouterr()
        assert out == ""
        assert "your teacher is untrained" in err
        for noise in ("Failed to load", "pytree", "onnxscript chatter", "experimental sampler", "some library"):
            assert noise not in err
        text = log.read_text()
        for noise in ("Failed to load _C_mxfp8", "pytree deprecation chatter", "onnxscript chatter",
                      "ExperimentalWarning: experimental sampler", "UserWarning: some library UserWarning"):
            assert noise in text
        assert "untrained" not in text

        # everything is put back: after the block, library loggers reach the console again
        assert logging.getLogger("torch").handlers == torch_handlers
        assert child.handlers == [own] and child.propagate is False
        child.warning("after the block")
        assert "after the block" in capfd.readouterr().err
    finally:
        child.removeHandler(own)


def test_filters_are_restored(tmp_path):
    before = list(warnings.filters)
    show = warnings.showwarning
    with capture_library_noise(tmp_path / "kdsearch.log"):
        warnings.simplefilter("always")
    assert warnings.filters == before and warnings.showwarning is show


@pytest.mark.slow
def test_torchao_import_is_silent_inside_the_capture(tmp_path):
    log = tmp_path / "kdsearch.log"
    code = textwrap.dedent(f"""
        from pathlib import Path
        from kdsearch.logs import capture_library_noise
        with capture_library_noise(Path({str(log)!r})):
            import torchao  # logs "Failed to load ..." at import where a kernel does not match the machine
            import torchao.quantization.pt2e
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert log.exists()
