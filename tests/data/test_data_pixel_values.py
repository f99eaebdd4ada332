"""The fast image path gives exactly what transformers' PIL image processors give, and falls back when it can't."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from fusevlm.processing import FusedImageProcessor, _fast_pixel_values, pixel_values, resize_image_processor

RNG = np.random.default_rng(0)
IMAGES = [Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
          for h, w in [(64, 64), (37, 91), (300, 200), (17, 17), (480, 640)]]
PROCESSORS = {
    "clip": lambda: CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
    "clip_odd": lambda: CLIPImageProcessorPil(size={"shortest_edge": 33}, crop_size={"height": 30, "width": 30}),
    "clip_default": CLIPImageProcessorPil,
    "siglip": lambda: SiglipImageProcessorPil(size={"height": 32, "width": 32}),
    "siglip_bilinear": lambda: SiglipImageProcessorPil(size={"height": 48, "width": 40}, resample=2),
    "chinese_clip": lambda: ChineseCLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False),
    "resized_member": lambda: resize_image_processor(CLIPImageProcessorPil(), 48),
    "no_normalize": lambda: CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                  do_normalize=False),
    "no_rescale": lambda: CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                do_rescale=False),
}


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_fast_path_is_bit_identical(name):
    processor = PROCESSORS[name]()
    for image in IMAGES:
        fast = _fast_pixel_values(processor, [image])
        assert fast is not None, image.size
        reference = processor([image], return_tensors="pt")["pixel_values"]
        assert fast.dtype == reference.dtype and torch.equal(fast, reference), image.size
    batch = [IMAGES[0], IMAGES[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    assert torch.equal(pixel_values(processor, batch), processor(batch, return_tensors="pt")["pixel_values"])


def test_fallbacks_give_the_processors_own_output():
    clip = PROCESSORS["clip"]()
    gray = IMAGES[1].convert("L")
    assert _fast_pixel_values(clip, [gray]) is None  # not RGB: the processor's own conversion
    assert torch.equal(pixel_values(clip, [gray]), clip([gray], return_tensors="pt")["pixel_values"])
    padded_crop = CLIPImageProcessorPil(size={"height": 16, "width": 16}, crop_size={"height": 32, "width": 32})
    assert _fast_pixel_values(padded_crop, [IMAGES[0]]) is None  # a crop larger than the image pads
    ragged = ChineseCLIPImageProcessorPil(size={"shortest_edge": 32}, do_center_crop=False)
    assert _fast_pixel_values(ragged, IMAGES[:2]) is None  # different output sizes: let transformers refuse


def test_fused_processor_stacks_members_fast():
    fused = FusedImageProcessor([PROCESSORS["clip"](), SiglipImageProcessorPil(size={"height": 64, "width": 64})])
    expected = torch.cat([m(IMAGES[:2], return_tensors="pt")["pixel_values"] for m in fused.members], dim=1)
    assert torch.equal(fused(IMAGES[:2])["pixel_values"], expected)
