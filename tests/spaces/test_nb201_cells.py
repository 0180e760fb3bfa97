"""NAS-Bench-201 cell strings and cell semantics."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from kdsearch.errors import SpaceError
from kdsearch.models.nb201 import NB201_OPS, NB201Cell, NB201Net, format_cell, parse_cell
from kdsearch.spaces import load_space

EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def test_example_string_parses_in_edge_order():
    assert parse_cell(EXAMPLE) == [
        "nor_conv_3x3",  # 1 <- 0
        "nor_conv_3x3",  # 2 <- 0
        "avg_pool_3x3",  # 2 <- 1
        "skip_connect",  # 3 <- 0
        "nor_conv_3x3",  # 3 <- 1
        "skip_connect",  # 3 <- 2
    ]
    assert format_cell(parse_cell(EXAMPLE)) == EXAMPLE


def test_all_15625_cells_round_trip_and_are_distinct():
    strings = set()
    for ops in itertools.product(NB201_OPS, repeat=6):
        text = format_cell(ops)
        assert parse_cell(text) == list(ops)
        strings.add(text)
    assert len(strings) == 15_625 == 5**6
    assert load_space("nb201").size() == 15_625


@pytest.mark.parametrize(
    "text, words",
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", ["3 node groups"]),
        (EXAMPLE.replace("avg_pool_3x3~1", "avg_pool_3x3~0"), ["input 1", "op~1"]),
        (EXAMPLE.replace("avg_pool_3x3", "max_pool_3x3"), ["unknown op 'max_pool_3x3'", "nor_conv_1x1"]),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", ["node 2 needs 2"]),
        ("nor_conv_3x3~0+|a~0|b~1|+|c~0|d~1|e~2|", ["must start and end with '|'"]),
        (42, ["not a string"]),
    ],
)
def test_bad_strings(text, words):
    with pytest.raises(SpaceError) as info:
        parse_cell(text)
    for word in words:
        assert word in str(info.value)
    assert "write it like" in str(info.value)


def test_format_rejects_bad_op_lists():
    with pytest.raises(SpaceError, match="6 edge ops"):
        format_cell(["none"] * 5)
    with pytest.raises(SpaceError, match="unknown NB201 op"):
        format_cell(["none"] * 5 + ["conv"])


def test_cell_dataflow_matches_hand_computation():
    x = torch.randn(2, 4, 8, 8)
    skip = NB201Cell(["skip_connect"] * 6, 4)
    # n1 = x, n2 = x + n1 = 2x, n3 = x + n1 + n2 = 4x
    torch.testing.assert_close(skip(x), 4 * x)
    pool = NB201Cell(["avg_pool_3x3", "none", "skip_connect", "none", "none", "skip_connect"], 4)
    expected = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # n1 = pool(x), n2 = n1, n3 = n2
    torch.testing.assert_close(pool(x), expected)


def test_disconnected_cell_outputs_zeros_and_builds():
    x = torch.randn(2, 4, 8, 8)
    dead = NB201Cell(["nor_conv_3x3", "nor_conv_1x1", "skip_connect", "none", "none", "none"], 4)
    assert torch.count_nonzero(dead(x)) == 0
    model = NB201Net(["none"] * 6, cells=1, channels=4, num_classes=3, in_channels=1)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_all_conv_cell_has_the_published_size():
    """NB201's largest cell (every edge a 3x3 conv) has 1.53M parameters at C=16, N=5, 10 classes."""
    c, n, k = 16, 5, 10
    conv3 = lambda ci, co: 9 * ci * co + 2 * co  # conv + BN (gamma, beta)  # noqa: E731
    cells = sum(6 * n * conv3(w, w) for w in (c, 2 * c, 4 * c))
    reductions = sum(conv3(w, 2 * w) + conv3(2 * w, 2 * w) + w * 2 * w for w in (c, 2 * c))  # + 1x1 shortcut
    expected = (3 * 9 * c + 2 * c) + cells + reductions + 2 * 4 * c + (4 * c * k + k)
    model = NB201Net(["nor_conv_3x3"] * 6, cells=n, channels=c, num_classes=k, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert abs(expected / 1e6 - 1.53) < 0.005
