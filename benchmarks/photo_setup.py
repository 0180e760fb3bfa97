"""What the 224-px benchmarks start from: a generated photo folder and a ResNet-18 teacher as ``.pt2``.

The photos are JPEGs of about 260×300 whose class sets the colour and the stripes' direction
(plus noise), so a short distillation has something to learn; the teacher is kdsearch's zoo
``resnet18`` (ImageNet layout: 7×7/2 stem + max-pool, 4 stages, total stride 32; fresh weights),
saved with ``torch.export`` at the photos' size with a dynamic batch, as a user hands one over.

    python benchmarks/photo_setup.py --photos DIR --per-class 100 --teacher teacher.pt2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASS_COLOURS = [(200, 60, 40), (40, 160, 60), (50, 70, 200), (210, 190, 40), (150, 60, 170), (60, 180, 190)]


def write_photo_folder(root: Path, classes: int = 3, per_class: int = 16, seed: int = 0) -> Path:
    """``root/class_k/NNN.jpg``: class k has colour ``CLASS_COLOURS[k]`` and stripes at k·60°."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(classes):
        colour = np.array(CLASS_COLOURS[k % len(CLASS_COLOURS)], np.float32)
        angle = np.pi * k / classes
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(240, 281)), int(rng.integers(280, 321))
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            phase = rng.uniform(0, 2 * np.pi)
            stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / 6.0 + phase)  # (H, W)
            pixels = colour * (0.4 + 0.6 * stripes[..., None]) + rng.normal(0, 20, (h, w, 3))  # (H, W, 3)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def save_resnet18_teacher(path: Path, num_classes: int, image_size: int = 224, seed: int = 0) -> int:
    """Export the zoo ``resnet18`` (fresh weights) to ``path`` with a dynamic batch; returns its params."""
    import torch

    from kdsearch.models.zoo import create_model

    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=num_classes, in_channels=3).eval()
    example = torch.randn(2, 3, image_size, image_size)  # (B, 3, H, W)
    batch = {"x": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=batch), str(path))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="folder to write (class_k/NNN.jpg)")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--teacher", type=Path, help="also write the resnet18 teacher here (.pt2)")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    write_photo_folder(args.photos, args.classes, args.per_class)
    print(f"wrote {args.classes * args.per_class} photos under {args.photos}")
    if args.teacher:
        params = save_resnet18_teacher(args.teacher, args.classes, args.image_size)
        print(f"wrote {args.teacher} (resnet18, {params:,} params, {args.image_size} px, dynamic batch)")


if __name__ == "__main__":
    main()
