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


def test_qwen_v1_config_reads_as_the_shipped_qwen2_shapes(tmp_path):
    # Qwen-14B's own config.json (remote code): intermediate_size is twice the MLP width.
    v1 = {
        "model_type": "qwen",
        "hidden_size": 5120,
        "intermediate_size": 27392,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "kv_channels": 128,
        "vocab_size": 152064,
        "seq_length": 2048,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(v1))
    local, shipped = text_config(tmp_path), text_config("Qwen/Qwen-14B")
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
        "rms_norm_eps",
    )
    assert {k: getattr(local, k) for k in keys} == {k: getattr(shipped, k) for k in keys}


def test_every_shipped_config_has_its_source():
    files = sorted(MODEL_CONFIGS.glob("*.json"))
    assert len(files) == 4
    for path in files:
        assert json.loads(path.read_text())["_source"].startswith("https://huggingface.co/"), path.name
