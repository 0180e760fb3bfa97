"""``npz:FILE``: arrays ``x`` (uint8, ``N×H×W`` or ``N×H×W×C``) and ``y`` (int), optionally
``x_test``/``y_test``. Loaded with ``allow_pickle=False``: nothing in the file is executed."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from kdsearch.data.dataset import DATASETS, Augment, ImageSet, ProgressFn, RawDataset
from kdsearch.errors import DataError, UsageError

__all__ = ["load_npz"]


def _images(file: Path, key: str, x: np.ndarray) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise DataError(
            f"{file}: {key} has dtype {x.dtype}, expected uint8 pixels 0-255; "
            f"save it as np.clip(np.round({key}), 0, 255).astype(np.uint8) (multiply by 255 first if it is 0-1)"
        )
    if x.ndim == 3:
        return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # (N, 1, H, W)
    if x.ndim == 4:
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, C, H, W)
    raise DataError(f"{file}: {key} has shape {x.shape}; expected N×H×W or N×H×W×C (channels last)")


def _labels(file: Path, key: str, y: np.ndarray, n: int) -> torch.Tensor:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{file}: {key} has dtype {y.dtype}; expected integer class indices: save {key}.astype(np.int64)")
    if y.shape != (n,):
        raise DataError(f"{file}: {key} has shape {y.shape} but there are {n} images; give one label per image, shape ({n},)")
    if n and y.min() < 0:
        raise DataError(f"{file}: {key} has negative labels; use class indices 0..K-1")
    return torch.from_numpy(y.astype(np.int64))


@DATASETS.register("npz")
def load_npz(
    path: str | None,
    *,
    data_dir: Path | None,
    download: bool,
    progress: ProgressFn | None,
    image_size: int | None = None,  # native size only: load_dataset resizes
) -> RawDataset:
    """A NumPy ``.npz`` file (see the module docstring for its keys)."""
    if path is None:
        raise UsageError("npz needs a file: write npz:FILE.npz")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"npz: {file} does not exist or is not a file; check the path")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as e:  # object arrays need pickle: refused
        raise DataError(f"{file} holds pickled objects ({e}); save plain numeric arrays with np.savez") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{file} is not a readable .npz file ({e}); write it with np.savez") from None
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise DataError(
            f"{file} lacks {', '.join(sorted(missing))} (it has {', '.join(sorted(arrays)) or 'nothing'}); "
            "save it as np.savez(FILE, x=images, y=labels[, x_test=..., y_test=...])"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{file} has only one of x_test / y_test; give both or neither")
    x = _images(file, "x", arrays["x"])
    train = ImageSet(x, _labels(file, "y", arrays["y"], len(x)))
    test = None
    if "x_test" in arrays:
        x_test = _images(file, "x_test", arrays["x_test"])
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{file}: x_test images are {tuple(x_test.shape[1:])} (C, H, W) but x images are "
                f"{tuple(x.shape[1:])}; they must match"
            )
        test = ImageSet(x_test, _labels(file, "y_test", arrays["y_test"], len(x_test)))
    num_classes = int(max(train.labels.max() if len(train) else -1, test.labels.max() if test and len(test) else -1)) + 1
    return RawDataset(
        name=f"npz:{file}",
        train=train,
        test=test,
        classes=tuple(str(k) for k in range(num_classes)),
        augment=Augment(pad=2, flip=False),
    )
