"""HF vision towers run only the layers up to ``feature_layer`` and still give ``hidden_states[feature_layer]``.

The expected features come from the transformers model itself (``output_hidden_states=True``), selected here
independently of the encoder's own code; the towers are tiny and random, built from configs as tests/tiny.py does.
"""

from __future__ import annotations

import pytest
import torch
from tiny import VISION

from fusevlm.models.vision import get_vision_encoder_class
from fusevlm.models.vision.hf import HFVisionEncoder

FAMILIES = ("clip", "siglip", "dinov2", "chinese_clip")
HAS_CLS = {"clip": True, "siglip": False, "dinov2": True, "chinese_clip": True}
LAYERS = 3  # -1, -2 and 1 then read three different hidden states (3, 2, 1)


def tiny_encoder(family: str, feature_layer: int, feature_select: str = "patch", run_size: int | None = None):
    torch.manual_seed(0)
    _, config_cls = VISION[family]
    config = config_cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    spec = {"config": config.to_dict(), "feature_layer": feature_layer, "feature_select": feature_select}
    if run_size is not None:
        spec["image_size"] = run_size
    encoder = get_vision_encoder_class(family)(spec)
    return encoder.eval()


def expected(encoder: HFVisionEncoder, family: str, pixel_values: torch.Tensor, interpolate: bool) -> torch.Tensor:
    kwargs = {"interpolate_pos_encoding": True} if interpolate and family != "dinov2" else {}
    out = encoder.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
    assert len(out.hidden_states) == LAYERS + 1
    hidden = out.hidden_states[encoder.feature_layer]
    if HAS_CLS[family] and encoder.feature_select == "patch":
        hidden = hidden[:, 1:]
    return hidden


def selects(family: str) -> list[str]:
    return ["patch", "cls_patch"] if HAS_CLS[family] else ["patch"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("feature_layer", [-1, -2, 1])
def test_matches_full_forward(family, feature_layer):
    for feature_select in selects(family):
        encoder = tiny_encoder(family, feature_layer, feature_select)
        assert encoder.layers_path is not None  # the early-exit path, not the fallback
        pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = encoder(pixel_values)
            want = expected(encoder, family, pixel_values, interpolate=False)
        assert got.shape == (2, encoder.num_tokens, 32)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["clip", "dinov2"])
@pytest.mark.parametrize("feature_layer", [-1, -2])
def test_matches_full_forward_at_another_resolution(family, feature_layer):
    encoder = tiny_encoder(family, feature_layer, run_size=48)  # native 32: position embeddings interpolate
    assert encoder.run_image_size != encoder.native_image_size
    pixel_values = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = encoder(pixel_values)
        want = expected(encoder, family, pixel_values, interpolate=True)
    assert got.shape == (2, encoder.num_tokens, 32) == (2, 36, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def _count_calls(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    counts = dict.fromkeys(modules, 0)
    for name, module in modules.items():
        module.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


@pytest.mark.parametrize("family", FAMILIES)
def test_top_layer_not_run(family):
    encoder = tiny_encoder(family, feature_layer=-2)
    layers = encoder.model.get_submodule(encoder.layers_path)
    watched = {f"layer{i}": layer for i, layer in enumerate(layers)}
    for name in ("post_layernorm", "layernorm", "head"):  # the post-norm / pooler, where the family has one
        if hasattr(encoder.model, name):
            watched[name] = getattr(encoder.model, name)
    counts = _count_calls(watched)
    with torch.no_grad():
        encoder(torch.randn(1, 3, 32, 32))
    assert counts.pop(f"layer{LAYERS - 1}") == 0
    assert all(counts[f"layer{i}"] == 1 for i in range(LAYERS - 1))
    assert all(counts[name] == 0 for name in counts if not name.startswith("layer"))


def test_last_layer_runs_every_layer_once():
    encoder = tiny_encoder("clip", feature_layer=-1)
    counts = _count_calls({f"layer{i}": layer for i, layer in enumerate(encoder.model.encoder.layers)})
    with torch.no_grad():
        encoder(torch.randn(1, 3, 32, 32))
    assert set(counts.values()) == {1}


def test_state_dict_unchanged():
    encoder = tiny_encoder("clip", feature_layer=-2)
    reference = VISION["clip"][0](encoder.model.config)
    assert sorted(k.removeprefix("model.") for k in encoder.state_dict()) == sorted(reference.state_dict())
    assert f"model.encoder.layers.{LAYERS - 1}.mlp.fc2.weight" in encoder.state_dict()


def test_feature_layer_out_of_range():
    encoder = tiny_encoder("siglip", feature_layer=-(LAYERS + 2))
    with pytest.raises(ValueError, match="feature_layer"):
        encoder(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("family", ["clip", "dinov2"])
def test_gradient_checkpointing_kept(family):
    """With activation checkpointing on the HF model, the layers run still checkpoint, and grads are unchanged."""
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def grads(checkpointing: bool):
        encoder = tiny_encoder(family, feature_layer=-2).train()
        calls = []
        if checkpointing:
            encoder.model.activation_checkpointing_enable()
            for layer in encoder.model.get_submodule(encoder.layers_path):
                assert layer.gradient_checkpointing
                inner = layer._gradient_checkpointing_func
                layer._gradient_checkpointing_func = lambda *a, inner=inner, **k: (calls.append(1), inner(*a, **k))[1]
        encoder(pixel_values).square().mean().backward()
        named = dict(encoder.named_parameters())
        return calls, {k: p.grad for k, p in named.items() if p.grad is not None}, named

    calls, with_ckpt, named = grads(True)
    assert len(calls) == LAYERS - 1  # the two layers run, each checkpointed; the top one is not run at all
    _, without, _ = grads(False)
    assert with_ckpt.keys() == without.keys()
    top = f"model.{'encoder.layers' if family == 'clip' else 'encoder.layer'}.{LAYERS - 1}."
    assert any(k.startswith(top) for k in named)  # the top layer is still there (state dict unchanged) ...
    assert not any(k.startswith(top) for k in with_ckpt)  # ... but gets no gradient: it is not run
    for key in without:
        torch.testing.assert_close(with_ckpt[key], without[key], rtol=1e-5, atol=1e-7)


def test_subclass_without_layers_path_runs_full_model():
    """A family that declares nothing keeps today's behaviour: the whole HF forward, hidden_states[feature_layer]."""
    clip_cls = get_vision_encoder_class("clip")

    class PlainCLIP(clip_cls):
        layers_path = None
        pre_norm_path = None

    torch.manual_seed(0)
    reference = tiny_encoder("clip", feature_layer=-2)
    plain = PlainCLIP(reference.spec)
    plain.load_state_dict(reference.state_dict())
    plain.eval()
    counts = _count_calls({"top": plain.model.encoder.layers[-1]})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), reference(x), rtol=0, atol=1e-6)
    assert counts["top"] == 1
