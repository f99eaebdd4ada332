"""The seed's files load tensor for tensor and compute what the seed's code computes (item 2 of issue 16).

Files are written in the seed's exact key layouts by seed_files.py, in bf16 as real ones are; the expected outputs
come from the seed's forward written out there, not from fusevlm.
"""

from __future__ import annotations

import os

import pytest
import torch
from seed_files import (
    IMAGE,
    LLM_HIDDEN,
    NUM_QUERIES,
    VISION_WIDTH,
    fusevlm_name,
    seed_projector_forward,
    seed_projector_state,
    seed_trunk_forward,
    seed_visual_state,
    visual_config,
    write_visual_folder,
)

from fusevlm import load_mixed_pretrained_model
from fusevlm.models import build_projector, load_projector_weights, load_vision_encoder
from fusevlm.models.builder import projector_key

GRID = (IMAGE // 8, IMAGE // 8)
PREFIXES = ["transformer.mm_projector.", "model.mm_projector.", ""]  # a Qwen LLM's, a Llama one's, bare


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))


# ---- Qwen-VL-visual/ -------------------------------------------------------------------------------------------
def test_the_seeds_visual_folder_loads_every_tensor_and_runs_the_seeds_trunk(tmp_path):
    state = seed_visual_state()
    folder = write_visual_folder(tmp_path / "Qwen-VL-visual", state, visual_config(image_start_id=306))
    encoder = load_vision_encoder(str(folder))  # found by its files: there is no config.json
    assert (encoder.name, encoder.hidden_size, encoder.num_tokens) == ("qwen_vl", VISION_WIDTH, 16)
    own = encoder.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value.to(own[key].dtype)), key
    with torch.no_grad():
        ours = encoder(pixels())
    torch.testing.assert_close(ours, seed_trunk_forward(state, pixels()), rtol=1e-4, atol=1e-5)
    assert encoder.seed_visual_config["image_start_id"] == 306


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("ln_pre.bias"), r"missing: ln_pre\.bias"),
        (lambda s: s.update({"attn_pool.query": torch.zeros(4, 4)}), r"unexpected: attn_pool\.query"),
        (lambda s: s.update({"positional_embedding": torch.zeros(100, VISION_WIDTH)}),
         r"shape differs: positional_embedding \(100, 48\) \(expected \(256, 48\)\)"),
    ],
    ids=["missing", "extra", "shape"],
)
def test_a_visual_bin_that_does_not_fit_is_refused_naming_the_key(change, message, tmp_path):
    state = seed_visual_state()
    change(state)
    folder = write_visual_folder(tmp_path / "Qwen-VL-visual", state, visual_config(image_start_id=306))
    with pytest.raises(ValueError, match=rf"visual\.bin: does not fit .*{message}"):
        load_vision_encoder(str(folder))


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.pop("width"), "missing: width"),
    (lambda c: c.update({"window": 7}), "unknown: window"),
])
def test_a_visual_config_without_a_field_or_with_an_unknown_one_is_refused(change, message, tmp_path):
    config = visual_config(image_start_id=306)
    change(config)
    folder = write_visual_folder(tmp_path / "Qwen-VL-visual", seed_visual_state(), config)
    with pytest.raises(ValueError, match=rf"visual_config\.json: .*{message}"):
        load_vision_encoder(str(folder))


# ---- mm_projector.bin -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu", "mlp3x_gelu", "cross_attn"])
def test_every_projector_type_loads_under_every_prefix_and_computes_the_seeds_projector(kind, prefix, tmp_path):
    state = seed_projector_state(kind)
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "mm_projector.bin")
    projector = build_projector({"type": kind}, VISION_WIDTH, LLM_HIDDEN, GRID, GRID[0] * GRID[1])
    load_projector_weights(projector, tmp_path / "mm_projector.bin")
    own = projector.state_dict()
    assert set(own) == {fusevlm_name(kind, k) for k in state}
    for key, value in state.items():
        assert torch.equal(own[fusevlm_name(kind, key)], value.float()), key
    features = torch.randn(2, GRID[0] * GRID[1], VISION_WIDTH, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = projector(features)
    torch.testing.assert_close(ours, seed_projector_forward(kind, state, features), rtol=1e-4, atol=1e-5)


def test_cross_attn_keeps_the_files_pos_embed_and_has_kv_proj_only_when_the_widths_differ(tmp_path):
    state = seed_projector_state("cross_attn", vision_width=LLM_HIDDEN)
    assert not any("kv_proj" in k for k in state)
    torch.save({"transformer.mm_projector." + k: v for k, v in state.items()}, tmp_path / "mm_projector.bin")
    projector = build_projector({"type": "cross_attn"}, LLM_HIDDEN, LLM_HIDDEN, GRID, GRID[0] * GRID[1])
    load_projector_weights(projector, tmp_path / "mm_projector.bin")
    assert "kv_proj.weight" not in projector.state_dict()
    # the saved positions, not the sin-cos table a fresh resampler computes
    assert torch.equal(projector.pos_embed, state["attn_pool.pos_embed"].float())
    assert projector.num_output_tokens == NUM_QUERIES
    features = torch.randn(1, GRID[0] * GRID[1], LLM_HIDDEN, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = projector(features)
    torch.testing.assert_close(ours, seed_projector_forward("cross_attn", state, features), rtol=1e-4, atol=1e-5)


def test_an_identity_projector_file_is_empty_and_a_tensor_in_it_is_refused(tmp_path):
    projector = build_projector({"type": "identity"}, LLM_HIDDEN, LLM_HIDDEN, GRID, GRID[0] * GRID[1])
    torch.save({}, tmp_path / "empty.bin")
    load_projector_weights(projector, tmp_path / "empty.bin")
    torch.save({"model.mm_projector.weight": torch.zeros(2, 2)}, tmp_path / "extra.bin")
    with pytest.raises(ValueError, match=r"extra\.bin: does not fit projector 'identity': unexpected: "
                                         r"model\.mm_projector\.weight"):
        load_projector_weights(projector, tmp_path / "extra.bin")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("transformer.mm_projector.attn_pool.pos_embed"), r"missing: pos_embed"),
        (lambda s: s.update({"transformer.wte.weight": torch.zeros(3, 3)}), r"unexpected: transformer\.wte\.weight"),
        (lambda s: s.update({"transformer.mm_projector.attn_pool.query": torch.zeros(4, LLM_HIDDEN)}),
         r"shape differs: transformer\.mm_projector\.attn_pool\.query \(4, 256\) \(expected \(256, 256\)\)"),
    ],
    ids=["missing", "extra", "shape"],
)
def test_a_projector_file_that_does_not_fit_is_refused_naming_the_key(change, message, tmp_path):
    state = {"transformer.mm_projector." + k: v for k, v in seed_projector_state("cross_attn").items()}
    change(state)
    torch.save(state, tmp_path / "mm_projector.bin")
    projector = build_projector({"type": "cross_attn"}, VISION_WIDTH, LLM_HIDDEN, GRID, GRID[0] * GRID[1])
    with pytest.raises(ValueError, match=rf"mm_projector\.bin: does not fit projector 'cross_attn': .*{message}"):
        load_projector_weights(projector, tmp_path / "mm_projector.bin")


def test_projector_key_prefixes():
    assert projector_key("transformer.mm_projector.attn_pool.query") == "query"
    assert projector_key("base_model.model.model.mm_projector.0.weight") == "0.weight"
    assert projector_key("mm_projector.ln_post.weight") == "ln_post.weight"
    assert projector_key("projector.mlp.0.bias") == "mlp.0.bias"
    assert projector_key("proj") == "proj"


# ---- the whole release folder ---------------------------------------------------------------------------------
def test_the_release_folder_loads_and_its_vision_path_computes_the_seeds(release):
    model_path = str(release)
    _, model, image_processor, _ = load_mixed_pretrained_model(
        model_path, None, "qwen-vl-14b", os.path.join(model_path, "Qwen-VL-visual"), "cross_attn",
        os.path.join(model_path, "mm_projector/mm_projector.bin"))
    visual = torch.load(release / "Qwen-VL-visual/visual.bin", weights_only=True)
    projector = {k.removeprefix("transformer.mm_projector."): v
                 for k, v in torch.load(release / "mm_projector/mm_projector.bin", weights_only=True).items()}
    for key, value in visual.items():
        assert torch.equal(model.vision_tower.state_dict()[key], value.float()), key
    for key, value in projector.items():
        assert torch.equal(model.projector.state_dict()[fusevlm_name("cross_attn", key)], value.float()), key
    assert model.config.image_seq_length == NUM_QUERIES
    assert image_processor(images=[torch.zeros(3, 64, 48)], return_tensors="pt")["pixel_values"].shape == (
        1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours = model.get_image_features(pixels())
    expected = seed_projector_forward("cross_attn", projector, seed_trunk_forward(visual, pixels()))
    assert ours.shape == (2, NUM_QUERIES, LLM_HIDDEN)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
