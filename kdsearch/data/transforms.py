"""Image transforms written in the project (no torchvision): the photo resize and centre crop
done once when decoding, a bilinear resize of whole uint8 sets, and the batched
RandomResizedCrop used as training augmentation for photos."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image

from kdsearch.errors import UsageError

__all__ = [
    "PHOTO_MIN_SIDE",
    "PHOTO_SIZE",
    "CROP_FRACTION",
    "check_image_size",
    "resize_and_center_crop",
    "resize_images",
    "random_resized_crop",
]

PHOTO_MIN_SIDE = 64  # images whose shorter side exceeds this are photos: cropped to PHOTO_SIZE by default
PHOTO_SIZE = 224  # the usual ImageNet input side
CROP_FRACTION = 224 / 256  # the ImageNet eval transform: resize the shorter side to size / 0.875, crop size


def check_image_size(image_size: int | None) -> None:
    """Refuse a non-positive ``image_size`` (None, the native size, is fine)."""
    if image_size is not None and image_size <= 0:
        raise UsageError(f"image size must be a positive number of pixels, got {image_size}; omit it for the default")


def resize_and_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The standard ImageNet evaluation transform on one PIL image.

    The shorter side is resized (bilinear, antialiased by Pillow when shrinking) to
    ``round(size / CROP_FRACTION)``, then the central ``size × size`` square is kept.

    Args:
        image: any size and mode; call ``Image.draft`` first to let JPEGs decode smaller.
        size: the side of the square result.

    Returns:
        A ``size × size`` image in the mode of ``image``.
    """
    w, h = image.size
    short = round(size / CROP_FRACTION)
    scale = short / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_images(images: torch.Tensor, size: tuple[int, int], chunk_bytes: int = 1 << 27) -> torch.Tensor:
    """Bilinear resize of uint8 images, in chunks so no float copy of the whole set exists.

    Args:
        images: ``(N, C, H, W)`` uint8.
        size: ``(H', W')`` of the result.
        chunk_bytes: bound on the float32 working memory of one chunk.

    Returns:
        ``(N, C, H', W')`` uint8 (antialiased when shrinking, like Pillow).
    """
    n, c, h, w = images.shape
    out = torch.empty(n, c, *size, dtype=torch.uint8)
    if n == 0:
        return out
    per_chunk = max(1, chunk_bytes // (4 * c * max(h * w, size[0] * size[1])))
    shrink = size[0] < h or size[1] < w
    for start in range(0, n, per_chunk):
        x = images[start : start + per_chunk].to(torch.float32)  # (b, C, H, W)
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)  # (b, C, H', W')
        out[start : start + per_chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _crop_boxes(
    b: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomResizedCrop boxes ``(top, left, height, width)`` for ``b`` images, as float64 ``(B,)`` each.

    torchvision's rule, vectorised: up to ``attempts`` draws of an area fraction in ``scale``
    and a log-uniform aspect ratio in ``ratio``; the first draw that fits is used, else the
    largest centred crop whose aspect ratio is clamped into ``ratio``.
    """
    area = h * w
    fraction = torch.rand(b, attempts, generator=generator, dtype=torch.float64)  # (B, A)
    target = area * (scale[0] + (scale[1] - scale[0]) * fraction)  # (B, A) crop areas
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(b, attempts, generator=generator, dtype=torch.float64))  # (B, A)
    cw = torch.round(torch.sqrt(target * aspect))  # (B, A)
    ch = torch.round(torch.sqrt(target / aspect))  # (B, A)
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)  # (B, A)
    first = torch.argmax(fits.to(torch.int64), dim=1, keepdim=True)  # (B, 1): first fitting draw (0 if none)
    any_fit = fits.any(dim=1)  # (B,)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)  # (B,), (B,)
    # Fallback: the whole image, narrowed to the allowed aspect ratios.
    if w / h < ratio[0]:
        fw, fh = float(w), float(round(w / ratio[0]))
    elif w / h > ratio[1]:
        fw, fh = float(round(h * ratio[1])), float(h)
    else:
        fw, fh = float(w), float(h)
    cw = torch.where(any_fit, cw, torch.full_like(cw, fw))
    ch = torch.where(any_fit, ch, torch.full_like(ch, fh))
    u = torch.rand(b, 2, generator=generator, dtype=torch.float64)  # (B, 2): where the crop sits
    top = torch.where(any_fit, torch.floor(u[:, 0] * (h - ch + 1)), torch.floor((h - ch) / 2))
    left = torch.where(any_fit, torch.floor(u[:, 1] * (w - cw + 1)), torch.floor((w - cw) / 2))
    return top, left, ch, cw


def random_resized_crop(
    images_uint8: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """RandomResizedCrop (and a random horizontal flip) of a whole batch, back to its own size.

    Each image gets its own box (see torchvision's ``RandomResizedCrop``) and its own flip
    coin; every random number is drawn from ``generator`` on the CPU, so a generator in the
    same state gives the same batch on any device. A crop is never larger than the image
    and the output has the image's size, so resampling only ever magnifies: plain bilinear
    sampling (``grid_sample``, pixel centres aligned as in ``interpolate``) needs no antialias.

    Args:
        images_uint8: ``(B, C, H, W)`` uint8 on any device.
        generator: a CPU ``torch.Generator``.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        flip: also flip each image horizontally with probability 1/2.

    Returns:
        ``(B, C, H, W)`` uint8 on the device of ``images_uint8``, a new tensor.
    """
    b, c, h, w = images_uint8.shape
    if b == 0:
        return images_uint8.clone()
    top, left, ch, cw = _crop_boxes(b, h, w, scale, ratio, generator)  # (B,) each
    mirrored = torch.randint(0, 2, (b,), generator=generator).bool() if flip else torch.zeros(b, dtype=torch.bool)
    device = images_uint8.device
    # Output pixel centre o maps to crop coordinate left + (o + 0.5) * cw / W - 0.5 (in input pixels),
    # then to grid_sample's [-1, 1] with align_corners=False: g = (2 * x + 1) / W - 1.
    ox = (torch.arange(w, dtype=torch.float64) + 0.5) / w  # (W,)
    oy = (torch.arange(h, dtype=torch.float64) + 0.5) / h  # (H,)
    ox = torch.where(mirrored[:, None], 1.0 - ox[None, :], ox[None, :])  # (B, W): a flip reads right to left
    gx = (2 * (left[:, None] + ox * cw[:, None]) / w - 1).to(torch.float32)  # (B, W)
    gy = (2 * (top[:, None] + oy[None, :] * ch[:, None]) / h - 1).to(torch.float32)  # (B, H)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1).to(device)  # (B, H, W, 2)
    x = images_uint8.to(torch.float32)  # (B, C, H, W): one batch, never the data set
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, H, W)
    return out.round_().clamp_(0, 255).to(torch.uint8)
