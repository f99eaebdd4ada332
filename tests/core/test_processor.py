"""The processor: M image tokens per <image>, mixed batches, chat template, clear errors, round trip."""

import pytest
import torch
from PIL import Image

from fusevlm import FuseVLMProcessor, build_vlm
from fusevlm.processing import ImageTokenError


@pytest.fixture(scope="module")
def parts(checkpoints):
    return build_vlm(
        str(checkpoints("vision", "clip", hidden=64)), "mlp2x_gelu", str(checkpoints("llm", "llama"))
    )


def image(color=(255, 0, 0), size=(40, 30)):
    return Image.new("RGB", size, color)


def test_each_placeholder_becomes_exactly_m_contiguous_image_tokens(parts):
    _, processor = parts
    m = processor.image_seq_length
    batch = processor(
        text=["a <image> b <image> c", "text only", "<image>"],
        images=[image(), image(), image()],
        padding=True,
    )
    ids = batch["input_ids"]
    counts = (ids == processor.image_token_id).sum(dim=1).tolist()
    assert counts == [2 * m, 0, m]
    assert batch["pixel_values"].shape[0] == 3
    # spans are contiguous runs of exactly M
    row = (ids[0] == processor.image_token_id).int().tolist()
    runs, current = [], 0
    for flag in row + [0]:
        if flag:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    assert runs == [m, m]


def test_flat_and_nested_image_lists_agree(parts):
    _, processor = parts
    red, blue = image((255, 0, 0)), image((0, 0, 255))
    flat = processor(text=["<image> x", "y", "<image><image>"], images=[red, blue, red], padding=True)
    nested = processor(
        text=["<image> x", "y", "<image><image>"], images=[[red], [], [blue, red]], padding=True
    )
    assert torch.equal(flat["input_ids"], nested["input_ids"])
    assert torch.equal(flat["pixel_values"], nested["pixel_values"])


@pytest.mark.parametrize(
    "texts, images, sample",
    [
        (["<image>", "<image> <image>"], [[image()], [image()]], "sample 1"),
        (["<image>", "none"], [[image()], [image()]], "sample 1"),
        (["none", "<image>", "<image>"], [image()], "sample 2"),
        (["<image>"], [image(), image()], "sample 0"),
    ],
)
def test_mismatched_images_name_the_sample(parts, texts, images, sample):
    _, processor = parts
    with pytest.raises(ImageTokenError, match=sample):
        processor(text=texts, images=images, padding=True)


def test_truncation_inside_an_image_span_is_an_error(parts):
    _, processor = parts
    with pytest.raises(ImageTokenError, match="sample 0.*truncated"):
        processor(text=["hello <image> world"], images=[image()], truncation=True, max_length=5)


def test_chat_template_turns_image_parts_into_placeholders(parts):
    _, processor = parts
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And now?"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.count("<image>") == 1
    assert prompt.index("<image>") < prompt.index("What color?")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "red<|im_end|>" in prompt


def test_round_trip_keeps_tokens_pixels_and_template(parts, tmp_path):
    _, processor = parts
    processor.save_pretrained(tmp_path)
    again = FuseVLMProcessor.from_pretrained(tmp_path)
    assert again.image_seq_length == processor.image_seq_length
    assert again.image_token_id == processor.image_token_id
    assert again.chat_template == processor.chat_template
    a = processor(text=["<image> hi"], images=[image()])
    b = again(text=["<image> hi"], images=[image()])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_model_refuses_image_tokens_that_do_not_fit_the_images(parts):
    model, processor = parts
    batch = processor(text=["<image> a", "<image> b"], images=[image(), image()], padding=True)
    with pytest.raises(ValueError, match="sample 1: image tokens for 2 images.*pixel_values holds 1"):
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"][:1],
        )
    broken = batch["input_ids"].clone()
    first = (broken[1] == processor.image_token_id).nonzero()[0]
    broken[1, first] = 0  # one image token of sample 1 lost: not a whole image any more
    with pytest.raises(ValueError, match="sample 1"):
        model(input_ids=broken, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
