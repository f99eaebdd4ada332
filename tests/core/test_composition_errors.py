"""Bad choices are refused with messages that say what to do."""

import json
import pickle

import pytest
import torch

from fusevlm import build_vlm, load_mixed_pretrained_model
from fusevlm.models import build_projector
from fusevlm.models.llm import load_llm
from fusevlm.models.projectors import ProjectorError
from fusevlm.models.vision import build_vision_encoder, load_vision_encoder


def test_unknown_encoder_lists_the_available_ones():
    with pytest.raises(
        ValueError, match=r"unknown vision encoder 'clipp'.*chinese_clip, clip, dinov2, fused"
    ):
        build_vision_encoder({"encoder": "clipp"})


def test_unknown_projector_lists_the_available_ones():
    with pytest.raises(
        ValueError, match=r"unknown projector 'mlp'.*cross_attn.*identity.*linear.*pixel_shuffle"
    ):
        build_projector({"type": "mlp"}, 8, 8, (2, 2), 4)


def test_mlp_depth_is_read_from_the_name():
    projector = build_projector({"type": "mlp3x_gelu"}, 8, 16, (2, 2), 4)
    assert sum(isinstance(m, torch.nn.Linear) for m in projector.modules()) == 3
    assert projector(torch.zeros(1, 4, 8)).shape == (1, 4, 16)


@pytest.mark.parametrize(
    "config, grid, tokens, message",
    [
        ({"type": "identity"}, (2, 2), 4, r"vision hidden size \(8\) to equal the LLM hidden size \(16\)"),
        ({"type": "pixel_shuffle", "factor": 3}, (4, 4), 16, "4x4 patch grid is not divisible by factor 3"),
        ({"type": "pixel_shuffle"}, (4, 4), 17, "patch tokens only"),
        ({"type": "cross_attn", "num_queries": 5}, (4, 4), 16, "perfect square"),
        (
            {"type": "cross_attn", "num_queries": 4, "num_heads": 3},
            (4, 4),
            16,
            "not divisible by num_heads 3",
        ),
        ({"type": "linear", "bogus": 1}, (2, 2), 4, r"bad options \['bogus'\]"),
    ],
)
def test_projector_that_does_not_fit_says_why(config, grid, tokens, message):
    with pytest.raises(ProjectorError, match=message):
        build_projector(config, 8, 16, grid, tokens)


def test_cls_token_on_an_encoder_without_one_is_refused(checkpoints):
    with pytest.raises(ValueError, match="'siglip' has no CLS token"):
        load_vision_encoder(
            {"path": str(checkpoints("vision", "siglip", hidden=64)), "feature_select": "cls_patch"}
        )


def test_cls_patch_keeps_one_more_token(checkpoints):
    encoder = load_vision_encoder(
        {"path": str(checkpoints("vision", "clip", hidden=64)), "feature_select": "cls_patch"}
    )
    assert encoder.num_tokens == 17
    assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 17, 64)


def test_folder_of_another_kind_of_model_is_refused(checkpoints):
    with pytest.raises(ValueError, match="model_type 'llama', which no vision encoder accepts"):
        load_vision_encoder(str(checkpoints("llm", "llama")))


def test_remote_code_is_off_unless_asked(tmp_path, checkpoints):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = {
        "model_type": "my_secret_model",
        "auto_map": {"AutoModelForCausalLM": "modeling_x.MyModel", "AutoConfig": "configuration_x.MyConfig"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_llm(folder)


class Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle code ran')",))


def test_pickled_projector_weights_load_only_as_plain_tensors(tmp_path, checkpoints):
    vision, llm = str(checkpoints("vision", "clip", hidden=64)), str(checkpoints("llm", "llama"))
    bad = tmp_path / "mm_projector.bin"
    with open(bad, "wb") as handle:
        pickle.dump({"weight": Evil()}, handle)
    with pytest.raises(pickle.UnpicklingError):
        load_mixed_pretrained_model(llm, None, None, vision, "linear", bad)


def test_llava_style_projector_file_loads_and_a_wrong_one_says_what_differs(tmp_path, checkpoints):
    vision, llm = str(checkpoints("vision", "clip", hidden=64)), str(checkpoints("llm", "llama"))
    source, _ = build_vlm(vision, "mlp2x_gelu", llm)
    llava_keys = {
        f"model.mm_projector.{k.split('.', 1)[1]}": v for k, v in source.projector.state_dict().items()
    }
    assert "model.mm_projector.0.weight" in llava_keys
    torch.save(llava_keys, tmp_path / "mm_projector.bin")
    _, model, _, _ = load_mixed_pretrained_model(llm, None, None, vision, "mlp2x_gelu", tmp_path / "mm_projector.bin")
    for key, value in source.projector.state_dict().items():
        assert torch.equal(model.projector.state_dict()[key], value)
    with pytest.raises(ValueError, match=r"does not fit projector 'mlp\{N\}x_gelu'.*missing"):
        load_mixed_pretrained_model(llm, None, None, vision, "mlp3x_gelu", tmp_path / "mm_projector.bin")


def test_a_folder_of_another_architecture_is_refused_by_name(checkpoints):
    from fusevlm import FuseVLMForConditionalGeneration

    with pytest.raises(ValueError, match="config.json is a 'llama' model, not a fusevlm one"):
        FuseVLMForConditionalGeneration.from_pretrained(checkpoints("llm", "llama"))
