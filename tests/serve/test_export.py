"""Export to transformers' Llava and import back: same logits, same greedy generations, clear refusals."""

from __future__ import annotations

import argparse

import pytest
import torch
from serve_helpers import make_image

from fusevlm import FuseVLMForConditionalGeneration, FuseVLMProcessor
from fusevlm.eval.generate import Prompt, encode_prompts
from fusevlm.export import ExportError, export_hf_llava, import_hf_llava, run_export

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}]


def load_fusevlm(folder):
    return FuseVLMForConditionalGeneration.from_pretrained(str(folder)).eval(), FuseVLMProcessor.from_pretrained(folder)


def load_llava(folder):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(str(folder)).eval(), AutoProcessor.from_pretrained(str(folder))


def greedy(model, inputs, n=8):
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def exported(request, model_folders, tmp_path_factory):
    source = model_folders(request.param, "mlp2x_gelu")
    out = export_hf_llava(source, tmp_path_factory.mktemp("llava") / request.param)
    return source, out


@torch.inference_mode()
def test_exported_llava_matches_logits_and_generations(exported):
    source, out = exported
    model, processor = load_fusevlm(source)
    llava, llava_processor = load_llava(out)
    image = make_image()

    ours = encode_prompts(processor, [Prompt(MESSAGES, [image])])
    prompt = llava_processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    theirs = llava_processor(text=prompt, images=image, return_tensors="pt")
    # The exported processor writes the same prompt: same template, same image-token count, same pixels.
    assert theirs["input_ids"].tolist() == ours["input_ids"].tolist()
    torch.testing.assert_close(theirs["pixel_values"], ours["pixel_values"])

    diff = (llava(**ours).logits - model(**ours).logits).abs().max().item()
    assert diff <= 1e-4
    assert greedy(llava, theirs).tolist() == greedy(model, ours).tolist()


@torch.inference_mode()
def test_import_round_trip_gives_identical_model(exported, tmp_path):
    source, out = exported
    back = import_hf_llava(out, tmp_path / "back")
    model, processor = load_fusevlm(source)
    imported, imported_processor = load_fusevlm(back)

    assert imported_processor.chat_template == processor.chat_template
    assert imported.config.vision_config["feature_select"] == model.config.vision_config["feature_select"]
    inputs = encode_prompts(imported_processor, [Prompt(MESSAGES, [make_image()])])
    assert inputs["input_ids"].tolist() == encode_prompts(processor, [Prompt(MESSAGES, [make_image()])])["input_ids"].tolist()
    assert torch.equal(imported(**inputs).logits, model(**inputs).logits)


def test_cross_attn_projector_is_refused_with_reason(model_folders, tmp_path, capsys):
    source = model_folders("clip", {"type": "cross_attn", "num_queries": 4})
    with pytest.raises(ExportError, match=r"projector .*cross_attn.*Linear-GELU-Linear"):
        export_hf_llava(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert run_export(argparse.Namespace(model=source, out=tmp_path / "out", format="hf-llava")) == 2
    assert "mlp2x_gelu" in capsys.readouterr().out
