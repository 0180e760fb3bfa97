"""Listing commands (spaces, proxies, models, losses): plain text for people, JSON for tools."""
from __future__ import annotations

import json

import pytest

from kdsearch.cli.info import plain_summary


@pytest.mark.parametrize("doc, plain", [
    ('DisWOT semantic term alone: ``-L_sem`` (see :class:`Diswot` for ``semantic``).',
     "DisWOT semantic term alone: -L_sem (see Diswot for semantic)."),
    (":func:`~kdsearch.logs.capture_library_noise` sends `it` to :mod:`kdsearch.logs`",
     "capture_library_noise sends it to kdsearch.logs"),
    (":class:`the base <kdsearch.proxies.base.Proxy>` scores", "the base scores"),
    ("A first line\n    that goes on.\n\n    Args:\n        x: more.", "A first line that goes on."),
    (None, ""),
])
def test_plain_summary_drops_rest_markup(doc, plain):
    assert plain_summary(doc) == plain


@pytest.mark.parametrize("command", ["proxies", "models", "spaces", "losses"])
def test_listing_shows_no_rest_markup(cli, command):
    code, out, _ = cli(command)
    assert code == 0 and out.strip()
    assert "``" not in out and ":class:" not in out and ":func:" not in out


def test_losses_json_names_every_registered_loss_with_paper_and_options(cli):
    from kdsearch.distill.losses import LOSSES

    code, out, _ = cli("losses", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [e["name"] for e in listed] == LOSSES.names()
    for e in listed:
        cls = LOSSES.get(e["name"])
        assert e["paper"] == cls.paper and e["paper"]
        assert e["options"] == cls.option_info()
        assert "``" not in e["description"]


def test_losses_table_shows_each_loss_and_its_options(cli):
    from kdsearch.distill.losses import LOSSES

    code, out, _ = cli("losses")
    assert code == 0
    for name in LOSSES.names():
        assert name in out
    assert "label_smoothing" in out and "Hinton" in out


def test_losses_marks_the_configured_ones(cli, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("distill:\n  loss: dkd:1,ce:1\n")
    code, out, _ = cli("losses", "--json", "--config", config)
    assert code == 0
    assert {e["name"] for e in json.loads(out) if e["configured"]} == {"dkd", "ce"}


def test_spaces_lists_pruned_and_says_it_is_cut_from_the_teacher(cli, tmp_path):
    code, out, _ = cli("spaces", "--json")
    assert code == 0
    rows = {row["name"]: row["description"] for row in json.loads(out)}
    assert {"pruned", "resnet_cifar", "mbconv"} <= set(rows)
    assert "cut from your teacher" in rows["pruned"] and "--teacher" in rows["pruned"]
    code, out, _ = cli("spaces")
    assert code == 0 and "pruned" in out
    config = tmp_path / "config.yaml"  # a config searching pruned: marked, not loaded as a YAML space
    config.write_text("search: {space: pruned}\n")
    code, out, err = cli("spaces", "--config", config, "--json")
    assert code == 0, err
    assert [row["name"] for row in json.loads(out) if row["configured"]] == ["pruned"]
