"""The planner's arithmetic against numbers computed by hand (every figure below is written out)."""

import pytest

from fusevlm.plan import (
    Stack,
    layer_activation_bytes,
    logits_bytes,
    model_state_bytes,
    plan,
    stack_activation_bytes,
)


def test_model_states_per_strategy():
    # 1000 parameters, 100 trainable, 4 GPUs, bf16: weights 2 B, grads 2 B, Adam 12 B per trainable parameter.
    assert model_state_bytes(1000, 100, 4, "ddp") == {"weights": 2000, "gradients": 200, "optimizer": 1200}
    assert model_state_bytes(1000, 100, 4, "zero2") == {"weights": 2000, "gradients": 50, "optimizer": 300}
    assert model_state_bytes(1000, 100, 4, "zero3") == {"weights": 500, "gradients": 50, "optimizer": 300}
    # fp32: 4 B weights and grads, Adam's two moments only (no master copy).
    assert model_state_bytes(1000, 100, 4, "ddp", weight_bytes=4) == {
        "weights": 4000,
        "gradients": 400,
        "optimizer": 800,
    }
    with pytest.raises(ValueError, match="strategy"):
        model_state_bytes(1000, 100, 4, "fsdp")


def test_activation_formula():
    # s=4, b=2, h=8, a=2: s*b*h*(34 + 5*a*s/h) = 64 * (34 + 5) = 2496; without the scores 64 * 34 = 2176.
    assert layer_activation_bytes(4, 2, 8, 2) == 2496
    assert layer_activation_bytes(4, 2, 8, 2, flash_attention=True) == 2176
    stack = Stack(layers=3, hidden=8, heads=2)
    assert stack_activation_bytes(stack, 4, 2, checkpointing=False) == 3 * 2496
    # Checkpointed: each layer keeps its input, 2*s*b*h = 128 bytes, plus one layer rebuilt in the backward.
    assert stack_activation_bytes(stack, 4, 2, checkpointing=True) == 3 * 128 + 2496
    assert logits_bytes(4, 2, 10) == 6 * 4 * 2 * 10


# The tiny model of conftest.py, counted by hand:
# vision (CLIP, width 8, 1 layer, 2x2 patches): class embedding 8 + patch conv 3*14*14*8 = 4704 + positions 5*8 = 40
#   + pre-norm 16 + layer (q,k,v,out 4*(8*8+8) = 288, two norms 32, fc1 8*16+16 = 144, fc2 16*8+8 = 136) 600
#   + post-norm 16 = 5384
# projector mlp2x_gelu 8 -> 16: (8*16+16) + (16*16+16) = 416
# LLM (Llama, width 16, 2 layers, MLP 32, vocab 50): embeddings 50*16 = 800, per layer q,k,v,o 4*16*16 = 1024
#   + gate/up/down 3*16*32 = 1536 + two norms 32 = 2592, x2 = 5184, final norm 16, head 800 -> 6800
VISION, PROJECTOR, LLM = 5384, 416, 6800


def test_tiny_plan_full_fine_tune(write_recipe):
    result = plan(write_recipe(), num_gpus=2)
    assert result["image_tokens"] == 4
    assert {p: result["parameters"][p]["total"] for p in result["parameters"]} == {
        "vision_tower": VISION,
        "projector": PROJECTOR,
        "language_model": LLM,
    }
    assert result["total_parameters"] == 12600
    assert result["trainable_parameters"] == PROJECTOR + LLM == 7216
    assert result["batch"] == {"per_device": 2, "accumulation": 1, "global": 4, "seq_len": 8}
    # LLM activations, s=8, b=2, h=16, a=2: one layer 34*8*2*16 + 5*2*8*8*2 = 8704 + 1280 = 9984.
    # No checkpointing: 2 layers = 19968. Checkpointed: 2 * (2*8*2*16) + 9984 = 1024 + 9984 = 11008.
    # Logits: 6 * 8 * 2 * 50 = 4800.
    memory = result["memory"]
    ddp = {"weights": 25200, "gradients": 14432, "optimizer": 86592}  # 2*12600, 2*7216, 12*7216
    zero2 = {"weights": 25200, "gradients": 7216, "optimizer": 43296}  # grads and Adam halved over 2 GPUs
    zero3 = {"weights": 12600, "gradients": 7216, "optimizer": 43296}  # weights halved too
    for name, states in (("ddp", ddp), ("zero2", zero2), ("zero3", zero3)):
        assert {k: memory[name][k] for k in states} == states, name
        assert memory[name]["activations"] == 19968 + 4800
        assert memory[name]["activations_checkpointed"] == 11008 + 4800
    assert memory["ddp"]["total"] == 126224 + 24768
    assert memory["ddp"]["total_checkpointed"] == 126224 + 15808
    assert memory["zero3"]["total_checkpointed"] == 63112 + 15808
    assert result["recipe_strategy"] == "ddp"


def test_tiny_plan_lora(write_recipe):
    # LoRA r=2 on every LLM linear: per layer q,k,v,o 4 * 2*(16+16) = 256, gate/up 2 * 2*(16+32) = 192,
    # down 2*(32+16) = 96 -> 544, two layers 1088. PEFT adds the adapters and a trainable projector copy (416).
    result = plan(write_recipe(lora={"r": 2, "alpha": 4}), num_gpus=1)
    assert result["parameters"]["language_model"]["instruct"] == 1088
    assert result["parameters"]["language_model"]["align"] == 0
    assert result["trainable_parameters"] == 1088 + 416
    assert result["extra_parameters"] == 1088 + 416
    assert result["total_parameters"] == 12600 + 1088 + 416
    assert result["memory"]["ddp"]["optimizer"] == 12 * (1088 + 416)
    # Only the attention projections: 4 * 2*(16+16) * 2 layers = 512.
    targeted = plan(
        write_recipe(lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    )
    assert targeted["parameters"]["language_model"]["instruct"] == 512


def test_tiny_plan_align_and_trained_vision(write_recipe, tiny_folders):
    align = plan(write_recipe(stage="align"), num_gpus=1)
    assert align["trainable_parameters"] == PROJECTOR
    assert align["memory"]["ddp"]["gradients"] == 2 * PROJECTOR
    # Read at the default feature_layer -2, the one-layer tower stops before its layer: no activations to add.
    full = plan(write_recipe(), num_gpus=1)
    default = plan(write_recipe(train_vision=True), num_gpus=1)
    assert default["memory"]["ddp"]["activations"] == full["memory"]["ddp"]["activations"]
    # Read at its last layer, a trained tower adds that layer's activations: 5 tokens (4 patches + CLS), b=2,
    # h=8, a=2: 34*5*2*8 + 5*2*5*5*2 = 2720 + 500 = 3220.
    last = {"path": str(tiny_folders[0]), "feature_layer": -1}
    model = {"vision": last, "projector": "mlp2x_gelu", "llm": str(tiny_folders[1])}
    vision = plan(write_recipe(train_vision=True, model=model), num_gpus=1)
    assert vision["trainable_parameters"] == VISION + PROJECTOR + LLM
    assert vision["memory"]["ddp"]["activations"] - full["memory"]["ddp"]["activations"] == 3220
    # Checkpointed: its one layer keeps 2*5*2*8 = 160 and is rebuilt once (3220).
    assert (
        vision["memory"]["ddp"]["activations_checkpointed"]
        - full["memory"]["ddp"]["activations_checkpointed"]
        == 160 + 3220
    )


def test_fp32_recipe_and_flash_attention(write_recipe):
    result = plan(write_recipe(bf16=False), num_gpus=1, flash_attention=True, seq_len=4)
    assert result["dtype"] == "fp32"
    assert result["memory"]["ddp"]["weights"] == 4 * 12600
    assert result["memory"]["ddp"]["optimizer"] == 8 * 7216
    # s=4 (overridden), b=2, h=16, no scores: 34*4*2*16 = 4352 per layer, 2 layers; logits 6*4*2*50 = 2400.
    assert result["memory"]["ddp"]["activations"] == 2 * 4352 + 2400


def test_tiny_fused_tower(write_recipe, tiny_folders):
    vision, llm = tiny_folders
    last = {"path": str(vision), "feature_layer": -1}  # each member runs its one layer
    model = {"vision": [last, last], "projector": "mlp2x_gelu", "llm": str(llm)}
    result = plan(write_recipe(model=model, train_vision=True), num_gpus=1)
    # Two towers side by side, features concatenated to width 16: projector (16*16+16) * 2 = 544.
    assert result["parameters"]["vision_tower"]["total"] == 2 * VISION
    assert result["parameters"]["projector"]["total"] == 544
    # Each member's one layer on 5 tokens: 3220 bytes (see above), twice; plus the LLM's 19968 and logits 4800.
    assert result["memory"]["ddp"]["activations"] == 2 * 3220 + 19968 + 4800
