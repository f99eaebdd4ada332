"""Helpers shared by the serving tests (a uniquely named module: every test folder has a conftest)."""

from PIL import Image


def make_image(color: tuple[int, int, int] = (200, 30, 30), size: int = 48) -> Image.Image:
    """A small image with a square of another colour, so different images give different pixels."""
    image = Image.new("RGB", (size, size), color)
    image.paste((20, 20, 220), (size // 4, size // 4, size // 2, size // 2))
    return image
