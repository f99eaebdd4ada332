"""Parameter counts of the shipped model configs against the published sizes of the real models."""

import json
from pathlib import Path

import pytest

from fusevlm.model_configs import MODEL_CONFIGS, build_meta_model, projector_config, text_config, vision_spec
from fusevlm.models.configuration import FuseVLMConfig
from fusevlm.plan import part_parameters, plan

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def near(value: int, published: float, tolerance: float) -> bool:
    return abs(value - published) <= tolerance * published


@pytest.fixture(scope="module")
def llava():
    return plan(RECIPES / "llava-1.5-7b/pretrain.yaml", num_gpus=8)


@pytest.fixture(scope="module")
def codefuse():
    return plan(RECIPES / "codefuse-vlm-14b/pretrain.yaml", num_gpus=8)


def test_clip_vit_l14_is_304m(llava):
    assert near(llava["parameters"]["vision_tower"]["total"], 304e6, 0.02)


def test_vicuna_7b_is_6_7b(llava):
    assert near(llava["parameters"]["language_model"]["total"], 6.74e9, 0.02)


def test_llava_projector_and_image_tokens(llava):
    # mlp2x_gelu 1024 -> 4096 -> 4096, exactly; 336/14 = 24, 24*24 = 576 image tokens.
    assert llava["parameters"]["projector"]["total"] == (1024 * 4096 + 4096) + (4096 * 4096 + 4096)
    assert llava["image_tokens"] == 576


def test_qwen_14b_is_14_2b(codefuse):
    assert codefuse["sources"]["llm"] == "models/Qwen-14B-qwen2"  # the converted folder, planned offline
    assert near(codefuse["parameters"]["language_model"]["total"], 14.2e9, 0.02)
    assert codefuse["image_tokens"] == 256


def test_qwen_vl_visual_is_1_9b():
    """Qwen-VL's visual part as published (1.9B): the ViT-bigG trunk and its own 4096-wide resampler, which
    feeds Qwen-VL's 4096-wide LLM (Qwen-7B, 7.7B in the Qwen-VL paper)."""
    vision, defaults = vision_spec({"encoder": "qwen_vl", "path": "Qwen/Qwen-VL"})
    config = FuseVLMConfig(
        vision_config=vision,
        projector_config=projector_config("cross_attn", defaults),
        text_config=text_config("Qwen/Qwen-VL"),  # v1 remote-code config, read as Qwen2 shapes
    )
    parts = part_parameters(build_meta_model(config))
    assert config.projector_config == {
        "type": "cross_attn",
        "num_queries": 256,
        "embed_dim": 4096,
        "num_heads": 32,
    }
    assert near(parts["vision_tower"] + parts["projector"], 1.9e9, 0.05)
    assert near(parts["language_model"], 7.7e9, 0.02)


def test_qwen_14b_converts_to_the_shipped_qwen2_config():
    """Qwen-14B's published v1 config, converted, has Qwen-14B's published shapes, and the shipped config of the
    converted folder the codefuse recipe names is exactly what `fusevlm convert-llm qwen-v1` writes for it."""
    converted = text_config("Qwen/Qwen-14B")  # the v1 config.json, read as its conversion
    assert converted.model_type == "qwen2"
    assert (converted.hidden_size, converted.num_hidden_layers, converted.num_attention_heads) == (5120, 40, 40)
    assert (converted.intermediate_size, converted.num_key_value_heads) == (27392 // 2, 40)
    assert (converted.vocab_size, converted.max_position_embeddings, converted.rms_norm_eps) == (152064, 2048, 1e-6)
    assert converted.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert converted.tie_word_embeddings is False and converted.use_sliding_window is False
    shipped = json.loads((MODEL_CONFIGS / "models--Qwen-14B-qwen2.json").read_text())
    shipped.pop("_source")
    written = converted.to_diff_dict()
    written.pop("transformers_version")
    assert shipped == written
    assert text_config("models/Qwen-14B-qwen2").to_dict() == converted.to_dict()


def test_every_shipped_config_has_its_source():
    files = sorted(MODEL_CONFIGS.glob("*.json"))
    assert len(files) == 5
    for path in files:
        assert json.loads(path.read_text())["_source"].startswith("https://huggingface.co/"), path.name
