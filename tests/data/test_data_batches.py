"""normalize, augment_batch and fixed_batch."""
from __future__ import annotations

import pytest
import torch

from kdsearch.data import Augment, Dataset, ImageSet, augment_batch, fixed_batch, normalize
from kdsearch.errors import UsageError


def _ids_set(n: int, c: int = 1, size: int = 6) -> ImageSet:
    """Image i holds the value i % 256 in its top-left pixel (channel 0) and i // 256 next to it."""
    images = torch.zeros(n, c, size, size, dtype=torch.uint8)
    images[:, 0, 0, 0] = (torch.arange(n) % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (torch.arange(n) // 256).to(torch.uint8)
    return ImageSet(images, torch.arange(n) % 5)


def _ids(x_uint8: torch.Tensor) -> list[int]:
    return (x_uint8[:, 0, 0, 0].long() + 256 * x_uint8[:, 0, 0, 1].long()).tolist()


def test_normalize_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    for c in range(3):
        ref = (images[:, c].double() / 255.0 - mean[c]) / std[c]
        torch.testing.assert_close(out[:, c].double(), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(UsageError, match="3 channels but mean/std have 1/1"):
        normalize(images, (0.5,), (0.5,))


def _naive_candidates(image: torch.Tensor, pad: int, flip: bool) -> list[torch.Tensor]:
    """Every crop (and its mirror) of the zero-padded image, by plain slicing."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out.append(crop)
            if flip:
                out.append(crop.flip(-1))
    return out


@pytest.mark.parametrize("augment", [Augment(pad=2, flip=True), Augment(pad=3), Augment(flip=True)])
def test_augment_is_a_crop_or_mirror(augment: Augment) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 2, 7, 9), generator=g, dtype=torch.uint8)  # no zero pixels
    out = augment_batch(images, augment, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for src, dst in zip(images, out):
        assert any(torch.equal(dst, cand) for cand in _naive_candidates(src, augment.pad, augment.flip))
    again = augment_batch(images, augment, torch.Generator().manual_seed(3))
    other = augment_batch(images, augment, torch.Generator().manual_seed(4))
    assert torch.equal(out, again) and not torch.equal(out, other)
    if augment.flip and augment.pad == 0:
        flipped = [torch.equal(d, s.flip(-1)) for s, d in zip(images, out)]
        assert any(flipped) and not all(flipped)  # a coin per image, not per batch


def test_augment_noop_keeps_the_batch() -> None:
    images = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(augment_batch(images, Augment(), torch.Generator()), images)
    x = augment_batch(images, Augment(pad=1, flip=True), torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 4, 4) and x.dtype == torch.uint8


def _dataset(train: ImageSet) -> Dataset:
    empty = ImageSet(train.images[:0], train.labels[:0])
    return Dataset("t", train, empty, None, tuple("abcde"), (0.25,), (0.5,), Augment())


def test_fixed_batch_balanced_and_deterministic() -> None:
    data = _ids_set(100)  # labels i % 5, 20 per class
    ds = _dataset(data)
    x, y = fixed_batch(ds, 15, seed=1)
    assert x.shape == (15, 1, 6, 6) and torch.bincount(y).tolist() == [3] * 5
    x2, y2 = fixed_batch(ds, 15, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(fixed_batch(ds, 15, seed=2)[0], x)
    raw = torch.round((x * 0.5 + 0.25) * 255).to(torch.uint8)  # undo normalize independently
    ids = _ids(raw)
    assert len(set(ids)) == 15 and all(i % 5 == label for i, label in zip(ids, y.tolist()))
    with pytest.raises(UsageError, match="training set has 100"):
        fixed_batch(ds, 101, seed=0)


def test_fixed_batch_uneven_classes() -> None:
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 1)
    ds = _dataset(ImageSet(torch.zeros(13, 1, 2, 2, dtype=torch.uint8), labels))
    _, y = fixed_batch(ds, 9, seed=0)
    assert torch.bincount(y, minlength=3).tolist() == [6, 2, 1]  # rare classes all taken first
