"""Image references, safe image loading and LLaVA's aspect-ratio handling.

``load_image`` is the one place an image enters the framework: training, evaluation and serving all call it, so a
grayscale scan, a transparent PNG or a rotated phone photo becomes the same RGB picture everywhere.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fusevlm.data.errors import ImageError

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 50 * 2**20
ASPECT_MODES = ("pad", "resize", "crop")

# Modes holding one 16- or 32-bit integer channel. PNG and TIFF store 16-bit grayscale this way.
_WIDE_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# Modes with an alpha channel (premultiplied ones included); they are composited over white.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: a resolved file path or in-memory encoded bytes (Parquet / HF datasets).

    ``label`` is what messages show: the path as written in the dataset, or ``file[index].image[k]`` for bytes.
    """

    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    label: str = ""
    record_field: str | None = None  # the record's field it came from ("image", "images[1]"), where known

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageRef needs exactly one of path or data")

    @classmethod
    def from_path(cls, path: str | os.PathLike, label: str | None = None, record_field: str | None = None) -> ImageRef:
        path = path if isinstance(path, Path) else Path(path)
        return cls(path=path, label=label if label is not None else str(path), record_field=record_field)

    @classmethod
    def from_bytes(cls, data: bytes, label: str, record_field: str | None = None) -> ImageRef:
        return cls(data=bytes(data), label=label, record_field=record_field)

    def __str__(self) -> str:
        return self.label or str(self.path)


def load_image(
    ref: ImageRef | str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Read, fully decode and convert an image to RGB, or raise ``ImageError`` naming the image.

    The size in pixels is checked from the header before any pixel is decoded, so a decompression bomb costs
    nothing. EXIF orientation is applied, so the model sees the photo the way a viewer shows it.
    """
    if not isinstance(ref, ImageRef):
        ref = ImageRef.from_path(ref)
    data = _read_bytes(ref, max_bytes)
    image = _open_header(data, ref, max_pixels)
    _decode(image, ref)
    image = _apply_exif_orientation(image)
    return to_rgb(image, ref)


def _read_bytes(ref: ImageRef, max_bytes: int) -> bytes:
    # Reading the whole (bounded) file first closes it at once and lets one code path serve paths and bytes.
    if ref.data is not None:
        data = ref.data
    else:
        assert ref.path is not None
        try:
            size = ref.path.stat().st_size
        except FileNotFoundError:
            raise ImageError("image file not found", source=str(ref), reason="missing_image") from None
        except OSError as err:
            raise ImageError(f"cannot read image file: {err}", source=str(ref), reason="bad_image") from None
        if not ref.path.is_file():
            raise ImageError("image path is not a file", source=str(ref), reason="missing_image")
        if size > max_bytes:
            raise ImageError(
                f"image file is {size} bytes, over max_bytes={max_bytes}",
                source=str(ref),
                reason="image_too_large",
            )
        try:
            data = ref.path.read_bytes()
        except OSError as err:
            raise ImageError(f"cannot read image file: {err}", source=str(ref), reason="bad_image") from None
    if len(data) == 0:
        raise ImageError("image is empty (0 bytes)", source=str(ref), reason="bad_image")
    if len(data) > max_bytes:
        raise ImageError(
            f"image is {len(data)} bytes, over max_bytes={max_bytes}",
            source=str(ref),
            reason="image_too_large",
        )
    return data


def _open_header(data: bytes, ref: ImageRef, max_pixels: int) -> Image.Image:
    """Parse only the header and refuse images whose pixel count is over ``max_pixels``."""
    try:
        # PIL warns (or raises, past twice its global limit) about big images on open. We run our own check
        # below with our own limit, so its warning is noise here; its error is mapped to ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large: {err}", source=str(ref), reason="image_too_large") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image file", source=str(ref), reason="bad_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"corrupt image header: {err}", source=str(ref), reason="bad_image") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})", source=str(ref), reason="bad_image")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height} pixels, over max_pixels={max_pixels}",
            source=str(ref),
            reason="image_too_large",
        )
    return image


def _decode(image: Image.Image, ref: ImageRef) -> None:
    # Image.open is lazy; a truncated or corrupt file only fails when the pixels are decoded. Decode now so the
    # failure names this image instead of surfacing later inside the image processor.
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ImageError(f"corrupt or truncated image: {err}", source=str(ref), reason="bad_image") from None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    # A broken EXIF block says nothing about the pixels, which decoded fine: keep the image as stored rather
    # than lose the sample.
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # any metadata failure is handled the same way
        return image


def to_rgb(image: Image.Image, ref: ImageRef | str = "image") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    - alpha (RGBA, LA, PA, P or L/RGB with a transparent colour): composited over white, because transparent
      pixels often hold black and dropping alpha would turn a logo on a transparent background into a black box;
    - 16/32-bit integer grayscale (``I;16*``, ``I``): scaled from 0..65535 to 0..255 (values outside are clipped);
      PIL's own conversion would clip everything above 255 to white;
    - float (``F``): values are taken as 0..255 and clipped;
    - everything else (1, L, P, CMYK, YCbCr, ...): PIL's conversion.
    """
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_over_white(image)
    if image.mode in _WIDE_INT_MODES:
        return _gray_array_to_rgb(np.asarray(image).astype(np.float64) / 257.0)
    if image.mode == "F":
        return _gray_array_to_rgb(np.asarray(image).astype(np.float64))
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(
            f"cannot convert mode {image.mode!r} to RGB: {err}", source=str(ref), reason="bad_image"
        ) from None


def _composite_over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def mean_color(image_mean: tuple[float, ...] | list[float]) -> tuple[int, ...]:
    """The pad colour LLaVA-1.5 uses: the image processor's mean as 0..255 ints (truncated, as LLaVA does)."""
    return tuple(int(x * 255) for x in image_mean)


def apply_aspect(image: Image.Image, mode: str, background: tuple[int, ...] = (0, 0, 0)) -> Image.Image:
    """LLaVA's ``image_aspect_ratio``: ``pad`` to a centred square, ``crop`` the centre square, or ``resize``
    (returned unchanged: the image processor's own resize squashes or crops it)."""
    if mode == "pad":
        return pad_to_square(image, background)
    if mode == "crop":
        return center_crop_square(image)
    if mode == "resize":
        return image
    raise ValueError(f"unknown image_aspect_ratio {mode!r}; expected one of {ASPECT_MODES}")


def pad_to_square(image: Image.Image, background: tuple[int, ...] = (0, 0, 0)) -> Image.Image:
    """LLaVA's ``expand2square``: the image centred on a square canvas of its longer side."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), tuple(background))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def center_crop_square(image: Image.Image) -> Image.Image:
    """The centre square of the image, its side the shorter side."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))
