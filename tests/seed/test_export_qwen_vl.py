"""``fusevlm export --format qwen-vl``: the seed's model as a Qwen-VL-Chat folder, and back (issue 16, item 5).

The expected export is the seed's own files rearranged as its merge_pretrain_cross_attn_to_qwenvl.py does
(``transformer.mm_projector.X`` -> ``transformer.visual.X``) next to Qwen-VL's trunk names and the Qwen v1 LLM as
the release holds it; the key layout is checked against tests/tiny.py's Qwen-VL state dict.
"""

from __future__ import annotations

import json

import pytest
import torch
from qwen_v1_reference import qwen_v1_weights
from safetensors.torch import load_file
from seed_files import (
    IMAGE,
    LLM_HIDDEN,
    MLP_RATIO,
    PATCH,
    VISION_HEADS,
    VISION_LAYERS,
    VISION_WIDTH,
    image_start_id_for,
    qwen_v1_llm_config,
)
from tiny import qwen_vl_state_dict

from fusevlm import FuseVLMForConditionalGeneration, FuseVLMProcessor
from fusevlm.cli import main
from fusevlm.templates import LLAMA2


def tensors(folder):
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"]
    return {k: v for name in files for k, v in load_file(str(folder / name)).items()}


@pytest.fixture(scope="module")
def seed_model(release, tmp_path_factory):
    """The release as a fusevlm folder, the recipe's way (`fusevlm init`)."""
    out = tmp_path_factory.mktemp("init") / "codefuse-vlm-14b"
    assert main(["init", "--llm", str(release), "--vision", str(release / "Qwen-VL-visual"), "--projector",
                 "cross_attn", "--projector-weights", str(release / "mm_projector/mm_projector.bin"),
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def exported(seed_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "qwen-vl"
    assert main(["export", "--format", "qwen-vl", "--model", str(seed_model), "--out", str(out)]) == 0
    return out


def test_the_export_is_the_seeds_files_in_qwen_vls_layout(exported, release):
    written = tensors(exported)
    visual = torch.load(release / "Qwen-VL-visual/visual.bin", weights_only=True)
    projector = torch.load(release / "mm_projector/mm_projector.bin", weights_only=True)
    num_ranks = sum(1 for line in (release / "qwen.tiktoken").read_text().splitlines() if line.strip())
    llm = qwen_v1_weights(qwen_v1_llm_config(num_ranks), seed=7)
    expected = {"transformer.visual." + k: v for k, v in visual.items()}
    # the seed's merge script: drop the first two parts of "transformer.mm_projector.<name>"
    expected |= {"transformer.visual." + k.split(".", 2)[2]: v for k, v in projector.items()}
    expected |= llm
    assert set(written) == set(expected)
    for key, value in expected.items():
        assert torch.equal(written[key], value.to(written[key].dtype)), key
    layout = qwen_vl_state_dict(width=VISION_WIDTH, layers=VISION_LAYERS, image_size=IMAGE, patch=PATCH,
                                output_dim=LLM_HIDDEN, n_queries=4, mlp_width=int(VISION_WIDTH * MLP_RATIO))
    assert {k for k in written if k.startswith("transformer.visual.")} == set(layout)

    config = json.loads((exported / "config.json").read_text())
    assert config["visual"] == {
        "heads": VISION_HEADS, "image_size": IMAGE, "image_start_id": image_start_id_for(release),
        "layers": VISION_LAYERS, "mlp_ratio": MLP_RATIO, "output_dim": LLM_HIDDEN, "patch_size": PATCH,
        "width": VISION_WIDTH,
    }
    assert (config["model_type"], config["hidden_size"], config["seq_length"]) == ("qwen", LLM_HIDDEN, 1024)
    assert config["architectures"] == ["QWenLMHeadModel"]
    assert (exported / "qwen.tiktoken").read_bytes() == (release / "qwen.tiktoken").read_bytes()
    assert json.loads((exported / "generation_config.json").read_text())["chat_format"] == "chatml"


def test_export_then_import_gives_back_the_same_model(seed_model, exported, tmp_path):
    assert main(["import", "--format", "qwen-vl", "--model", str(exported), "--out", str(tmp_path / "back")]) == 0
    original = FuseVLMForConditionalGeneration.from_pretrained(seed_model)
    back = FuseVLMForConditionalGeneration.from_pretrained(tmp_path / "back")
    first, second = original.state_dict(), back.state_dict()
    assert set(first) == set(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert back.config.vision_config["config"] == original.config.vision_config["config"]
    assert back.config.image_token_id == original.config.image_token_id
    assert back.config.image_seq_length == original.config.image_seq_length
    p1, p2 = FuseVLMProcessor.from_pretrained(seed_model), FuseVLMProcessor.from_pretrained(tmp_path / "back")
    assert p2.chat_template == p1.chat_template
    assert p2.tokenizer.get_vocab() == p1.tokenizer.get_vocab()
    text = "Picture 1:<img></img> def train(model, data): 我们在框架下 <|im_end|>"
    assert p2.tokenizer(text)["input_ids"] == p1.tokenizer(text)["input_ids"]
    assert p2.image_processor.to_dict() == p1.image_processor.to_dict()
    assert back.generation_config.eos_token_id == original.generation_config.eos_token_id


def test_a_model_qwen_vl_cannot_hold_is_refused_with_every_reason(checkpoints, tmp_path, capsys):
    llama, clip = checkpoints("llm", "llama"), checkpoints("vision", "clip", hidden=64)
    assert main(["init", "--llm", str(llama), "--vision", str(clip), "--projector", "mlp2x_gelu",
                 "--template", "llama2", "--out", str(tmp_path / "m")]) == 0
    assert FuseVLMProcessor.from_pretrained(tmp_path / "m").chat_template == LLAMA2
    capsys.readouterr()
    assert main(["export", "--format", "qwen-vl", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "q")]) == 2
    message = capsys.readouterr().out
    assert "vision encoder 'clip'" in message and "projector 'mlp{N}x_gelu'" in message
    assert "LLM 'llama'" in message
    assert not (tmp_path / "q").exists()
