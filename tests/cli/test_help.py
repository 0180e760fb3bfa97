"""Every command explains itself with an example."""
from __future__ import annotations

import pytest

COMMANDS = ["run", "teach", "search", "distill", "export", "spaces", "proxies", "models", "losses"]


def test_root_help_lists_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out
    assert "Example" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_example(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "Example" in out
    assert "kdsearch " + command in out


def _all_commands() -> list[str]:
    import typer

    from kdsearch.cli import app

    return list(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", [None, *_all_commands()])
def test_flags_show_no_value_type(cli, command):
    """A flag takes no value, so --help shows none (Typer 0.29 would print `<bool>`)."""
    code, out, _ = cli(*([command] if command else []), "--help")
    assert code == 0 and "--help" in out
    assert "<bool>" not in out


def test_distill_loss_help_points_to_the_losses_list(cli):
    code, out, _ = cli("distill", "--help")
    assert code == 0 and "kdsearch losses" in " ".join(out.replace("│", " ").split())


def test_version(cli):
    from kdsearch import __version__

    code, out, _ = cli("--version")
    assert code == 0 and __version__ in out


def test_unknown_option_is_one_line_usage_error(cli):
    code, out, err = cli("search", "--no-such-flag")
    assert code == 2
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def _help_text(cli, *argv: str) -> str:
    code, out, _ = cli(*argv, "--help")
    assert code == 0
    return " ".join(out.replace("│", " ").split())


def test_run_help_says_which_stage_epochs_and_seed_reach(cli):
    text = _help_text(cli, "run")
    assert "Distillation epochs" in text and "teach" in text  # --epochs does not reach teach or QAT
    assert "data.seed" in text  # --seed does not move the train/val split


def test_search_help_says_nsga2_options_need_evolution(cli):
    assert _help_text(cli, "search").count("--sampler evolution only") == 2  # --mutation-prob, --crossover-prob
