"""Every encoder x every projector x three LLM families, from tiny checkpoints loaded by path."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from fusevlm import FuseVLMProcessor, build_vlm

ENCODERS = ["clip", "siglip", "dinov2", "chinese_clip", "qwen_vl", "fused"]
PROJECTORS = ["identity", "linear", "mlp2x_gelu", {"type": "cross_attn", "num_queries": 4}, "pixel_shuffle"]
FAMILIES = ["llama", "qwen2", "gpt2"]


def vision_source(checkpoints, encoder):
    if encoder == "fused":
        # Different patch sizes on purpose: the 8x8 DINOv2 grid is pooled to SigLIP's 4x4.
        return [
            str(checkpoints("vision", "siglip", hidden=32)),
            str(checkpoints("vision", "dinov2", hidden=32, patch=4)),
        ]
    return str(checkpoints("vision", encoder, hidden=64))


def prompts():
    red, blue = Image.new("RGB", (48, 32), (220, 20, 20)), Image.new("RGB", (20, 40), (20, 20, 220))
    texts = [
        "<image>\nWhat color is this?",
        "A text-only sample, no image.",
        "<image> vs <image>: which is red?",
    ]
    return texts, [[red], [], [blue, red]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("projector", PROJECTORS, ids=lambda p: p if isinstance(p, str) else p["type"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_compose_train_save_load_generate(checkpoints, tmp_path, encoder, projector, family):
    torch.manual_seed(0)
    model, processor = build_vlm(
        vision_source(checkpoints, encoder), projector, str(checkpoints("llm", family))
    )
    texts, images = prompts()
    batch = processor(text=texts, images=images, padding=True)
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [m * model.config.image_seq_length for m in (1, 0, 2)]

    # forward + backward: the loss reaches the projector
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.projector.parameters() if p.requires_grad]
    if projector == "identity":
        assert grads == []
    else:
        assert grads and all(g is not None for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0

    # save -> from_pretrained through the Auto class: identical logits
    model.eval()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "model").eval()
    reprocessor = FuseVLMProcessor.from_pretrained(tmp_path / "model")
    rebatch = reprocessor(text=texts, images=images, padding=True)
    assert torch.equal(rebatch["input_ids"], batch["input_ids"])
    assert torch.equal(rebatch["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        diff = (model(**batch).logits - reloaded(**rebatch).logits).abs().max().item()
    assert diff == 0.0

    # greedy generation with the KV cache: deterministic, and equal to generation without the cache
    prompt = reprocessor(text=[texts[0]], images=[images[0]])
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=reprocessor.tokenizer.pad_token_id)
    first = reloaded.generate(**prompt, **kwargs)
    again = reloaded.generate(**prompt, **kwargs)
    uncached = reloaded.generate(**prompt, use_cache=False, **kwargs)
    assert first.shape[1] > prompt["input_ids"].shape[1]
    assert torch.equal(first, again)
    assert torch.equal(first, uncached)
