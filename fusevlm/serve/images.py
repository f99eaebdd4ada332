"""Images from untrusted requests: ``data:`` URLs by default; remote URLs and local files only when enabled.

Every limit is checked before the expensive step it protects: the base64 length before decoding, the pixel
count from the image header before decoding pixels (decompression bombs), the byte count while downloading.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageRequestError(ValueError):
    """A request's image is refused; ``status`` is the HTTP status, ``code`` the OpenAI-style error code."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_image"):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class ImagePolicy:
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    allow_remote_images: bool = False
    # Local paths are read only from below this folder (None: local paths refused).
    local_image_root: Path | None = None
    remote_timeout_s: float = 10.0


def load_image(url: str, policy: ImagePolicy) -> Image.Image:
    """An RGB image from an ``image_url`` value, or :class:`ImageRequestError`."""
    if url.startswith("data:"):
        return decode_image(_data_url_bytes(url, policy), policy)
    if url.startswith(("http://", "https://")):
        if not policy.allow_remote_images:
            raise ImageRequestError(
                "remote image URLs are disabled on this server; send the image as a data: URL "
                "(the operator can enable them with --allow-remote-images)",
                code="remote_images_disabled",
            )
        return decode_image(_download(url, policy), policy)
    return decode_image(_local_file_bytes(url, policy), policy)


def _data_url_bytes(url: str, policy: ImagePolicy) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ImageRequestError("image data URLs must look like data:image/png;base64,<base64 bytes>")
    # 4 base64 characters carry 3 bytes: refuse before decoding anything.
    if len(payload) * 3 // 4 > policy.max_image_bytes:
        raise ImageRequestError(
            f"image larger than the {policy.max_image_bytes}-byte limit", status=413, code="image_too_large"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageRequestError(f"image data URL is not valid base64: {err}") from err


def _download(url: str, policy: ImagePolicy) -> bytes:
    import httpx

    data = bytearray()
    try:
        with httpx.stream("GET", url, timeout=policy.remote_timeout_s, follow_redirects=True) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > policy.max_image_bytes:
                    raise ImageRequestError(
                        f"image larger than the {policy.max_image_bytes}-byte limit", 413, "image_too_large"
                    )
    except httpx.HTTPError as err:
        raise ImageRequestError(f"could not fetch image {url}: {err}", code="image_fetch_failed") from err
    return bytes(data)


def _local_file_bytes(url: str, policy: ImagePolicy) -> bytes:
    if policy.local_image_root is None:
        raise ImageRequestError(
            "image_url must be a data: URL; local file paths are disabled on this server "
            "(the operator can allow a folder with --local-image-root)",
            code="local_images_disabled",
        )
    root = policy.local_image_root.resolve()
    path = Path(url.removeprefix("file://"))
    path = (path if path.is_absolute() else root / path).resolve()
    # resolve() follows symlinks and '..', so this check cannot be walked around.
    if not path.is_relative_to(root) or not path.is_file():
        raise ImageRequestError(f"no image file {url!r} under the allowed folder", code="image_not_found")
    if path.stat().st_size > policy.max_image_bytes:
        raise ImageRequestError(f"image larger than the {policy.max_image_bytes}-byte limit", 413, "image_too_large")
    return path.read_bytes()


def decode_image(data: bytes, policy: ImagePolicy) -> Image.Image:
    if len(data) > policy.max_image_bytes:
        raise ImageRequestError(f"image larger than the {policy.max_image_bytes}-byte limit", 413, "image_too_large")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
        width, height = image.size
        if width * height > policy.max_image_pixels:
            raise ImageRequestError(
                f"image of {width}x{height} pixels exceeds the {policy.max_image_pixels}-pixel limit",
                status=413,
                code="image_too_large",
            )
        return image.convert("RGB")
    except ImageRequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageRequestError(f"not a readable image: {err}") from err
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt files
        raise ImageRequestError(f"not a readable image: {err}") from err
