"""Image loading (every mode to RGB, broken and hostile files) and LLaVA's aspect handling."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from fusevlm.data.errors import DataError, ImageError
from fusevlm.data.images import (
    ImageRef,
    apply_aspect,
    center_crop_square,
    load_image,
    mean_color,
    pad_to_square,
    to_rgb,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def load_bytes(data: bytes, **kwargs) -> Image.Image:
    return load_image(ImageRef.from_bytes(data, label="test-image"), **kwargs)


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    return image.getpixel(xy)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose pixel data is a few bytes: decoding it would fail."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )


# -- reading ---------------------------------------------------------------------------------------------------


def test_load_from_path_and_from_bytes_give_the_same_rgb(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (3, 2), RED).save(path)
    from_path = load_image(ImageRef.from_path(path))
    from_bytes = load_bytes(path.read_bytes())
    assert from_path.mode == from_bytes.mode == "RGB"
    assert from_path.size == (3, 2)
    assert pixel(from_path) == pixel(from_bytes) == RED


def test_load_accepts_a_plain_path(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (2, 2), RED).save(path)
    assert pixel(load_image(path)) == RED


def test_image_ref_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError):
        ImageRef()
    with pytest.raises(ValueError):
        ImageRef(path=tmp_path / "a.png", data=b"x")


def test_missing_file_names_the_image(tmp_path):
    with pytest.raises(ImageError, match="not found") as info:
        load_image(ImageRef.from_path(tmp_path / "nope.png", label="imgs/nope.png"))
    assert "imgs/nope.png" in str(info.value)
    assert info.value.reason == "missing_image"
    assert isinstance(info.value, DataError)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not a recognised image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_truncated_jpeg_is_refused():
    # The test relies on PIL's default; a global LOAD_TRUNCATED_IMAGES=True would hide truncation.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=95)
    assert load_bytes(data).size == (64, 64)  # the whole file is fine
    with pytest.raises(ImageError, match="truncated") as info:
        load_bytes(data[: len(data) // 2])
    assert "test-image" in str(info.value)
    assert info.value.reason == "bad_image"


def test_truncated_png_is_refused():
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise))
    with pytest.raises(ImageError):
        load_bytes(data[: len(data) - 40])


def test_max_bytes(tmp_path):
    data = encode(Image.new("RGB", (8, 8), RED))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert load_image(path, max_bytes=len(data)).size == (8, 8)
    with pytest.raises(ImageError, match="max_bytes"):
        load_image(path, max_bytes=len(data) - 1)
    with pytest.raises(ImageError, match="max_bytes"):
        load_bytes(data, max_bytes=len(data) - 1)


# -- decompression bombs ---------------------------------------------------------------------------------------


def test_bomb_over_max_pixels_is_refused_from_the_header():
    # 9000 x 9000 = 81 Mpx: over our 64 Mpx default, under PIL's own error threshold, so it is our check that
    # fires. The pixel data is absent: had it been decoded, the error would be "truncated", not "too large".
    with pytest.raises(ImageError, match="max_pixels") as info:
        load_bytes(png_header_only(9000, 9000))
    assert info.value.reason == "image_too_large"
    assert "9000x9000" in str(info.value)


def test_giant_header_is_refused():
    with pytest.raises(ImageError, match="too large") as info:
        load_bytes(png_header_only(100_000, 100_000))
    assert info.value.reason == "image_too_large"


def test_max_pixels_is_checked_before_any_decoding(monkeypatch):
    data = encode(Image.new("RGB", (10, 11), RED))

    def refuse_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_decoding)
    with pytest.raises(ImageError, match="110 pixels, over max_pixels=109"):
        load_bytes(data, max_pixels=109)


def test_image_at_max_pixels_loads():
    assert load_bytes(encode(Image.new("RGB", (10, 11), RED)), max_pixels=110).size == (10, 11)


def test_huge_and_tiny_images_load():
    assert load_bytes(encode(Image.new("L", (6000, 3), 7))).size == (6000, 3)
    one = load_bytes(encode(Image.new("RGB", (1, 1), BLUE)))
    assert one.size == (1, 1) and pixel(one) == BLUE


# -- modes -----------------------------------------------------------------------------------------------------


def test_grayscale_l():
    assert pixel(load_bytes(encode(Image.new("L", (2, 2), 128)))) == (128, 128, 128)


def test_bilevel_1():
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    loaded = load_bytes(encode(image))
    assert pixel(loaded, (0, 0)) == (0, 0, 0)
    assert pixel(loaded, (1, 0)) == WHITE


def test_palette_p():
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    loaded = load_bytes(encode(image))
    assert pixel(loaded, (0, 0)) == (10, 20, 30)
    assert pixel(loaded, (1, 0)) == (200, 100, 50)


def test_palette_with_transparent_index_is_white():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    loaded = load_bytes(encode(image, transparency=0))  # index 0 (black) is transparent
    assert pixel(loaded, (0, 0)) == WHITE
    assert pixel(loaded, (1, 0)) == RED


def test_la_transparent_is_white_and_opaque_keeps_gray():
    image = Image.new("LA", (2, 1), (0, 0))
    image.putpixel((1, 0), (60, 255))
    loaded = load_bytes(encode(image))
    assert pixel(loaded, (0, 0)) == WHITE
    assert pixel(loaded, (1, 0)) == (60, 60, 60)


def test_rgba_composited_over_white():
    image = Image.new("RGBA", (3, 1), (255, 0, 0, 0))  # red, fully transparent
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    loaded = load_bytes(encode(image))
    assert pixel(loaded, (0, 0)) == WHITE  # not black, not red
    assert pixel(loaded, (1, 0)) == RED
    assert all(abs(channel - 127) <= 1 for channel in pixel(loaded, (2, 0)))


def test_cmyk():
    image = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 0))
    loaded = load_bytes(encode(image, "TIFF"))
    assert pixel(loaded, (0, 0)) == WHITE
    assert pixel(loaded, (1, 0)) == (0, 255, 255)


def test_16_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    loaded = load_bytes(data)
    assert [pixel(loaded, (x, 0))[0] for x in range(4)] == [0, 1, 128, 255]
    assert pixel(loaded, (3, 0)) == WHITE


def test_16_bit_big_endian_and_32_bit_int_modes():
    big_endian = Image.fromarray(np.array([[65535, 257]], dtype=">u2"))
    assert big_endian.mode == "I;16B"
    assert [pixel(to_rgb(big_endian), (x, 0))[0] for x in range(2)] == [255, 1]
    wide = Image.fromarray(np.array([[65535, 0, 70000]], dtype=np.int32))
    assert wide.mode == "I"
    assert [pixel(to_rgb(wide), (x, 0))[0] for x in range(3)] == [255, 0, 255]


def test_float_mode_is_clipped_to_8_bit():
    image = Image.fromarray(np.array([[-5.0, 100.4, 300.0]], dtype=np.float32))
    assert [pixel(to_rgb(image), (x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_exif_orientation_is_applied():
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to display.
    image = Image.new("RGB", (16, 8), BLUE)
    image.paste(RED, (0, 0, 8, 8))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_bytes(encode(image, exif=exif))
    assert loaded.size == (8, 16)
    assert pixel(loaded, (4, 2)) == RED  # the left half is now on top
    assert pixel(loaded, (4, 13)) == BLUE


# -- aspect ----------------------------------------------------------------------------------------------------


def test_pad_wide_image_centres_it_vertically():
    padded = apply_aspect(Image.new("RGB", (40, 20), RED), "pad", background=(1, 2, 3))
    assert padded.size == (40, 40)
    assert pixel(padded, (20, 9)) == (1, 2, 3)
    assert pixel(padded, (20, 10)) == RED
    assert pixel(padded, (20, 29)) == RED
    assert pixel(padded, (20, 30)) == (1, 2, 3)


def test_pad_tall_image_centres_it_horizontally():
    padded = pad_to_square(Image.new("RGB", (5, 10), RED), (9, 9, 9))
    assert padded.size == (10, 10)
    # LLaVA's expand2square offsets by (10 - 5) // 2 = 2 on the left.
    assert [pixel(padded, (x, 5)) for x in range(10)] == [(9, 9, 9)] * 2 + [RED] * 5 + [(9, 9, 9)] * 3


def test_pad_square_is_unchanged():
    image = Image.new("RGB", (7, 7), RED)
    assert apply_aspect(image, "pad") is image


def test_crop_takes_the_centre_square():
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (10, 0, 30, 20))
    cropped = apply_aspect(image, "crop")
    assert cropped.size == (20, 20)
    assert {pixel(cropped, (x, y)) for x in (0, 19) for y in (0, 19)} == {RED}
    tall = center_crop_square(Image.new("RGB", (3, 9), RED))
    assert tall.size == (3, 3)


def test_resize_leaves_the_image_to_the_processor():
    image = Image.new("RGB", (40, 20), RED)
    assert apply_aspect(image, "resize") is image


def test_unknown_aspect_mode():
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        apply_aspect(Image.new("RGB", (2, 1)), "stretch")


def test_mean_color_matches_llava():
    clip_mean = (0.48145466, 0.4578275, 0.40821073)
    assert mean_color(clip_mean) == (122, 116, 104)
