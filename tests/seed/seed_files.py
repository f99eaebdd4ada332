"""The seed's (CodeFuse-MFT-VLM's) files, built small in its exact key layouts, and its forward written out.

Everything here follows the seed's code (llava/model/multimodal_encoder/visual.py, multimodal_projector/builder.py,
llava/train/train.py), not fusevlm's: the tests compare fusevlm against it.

Widths all differ on purpose: the vision trunk is 48 wide, visual_config's output_dim says 80 (a resampler size the
seed's trunk does not have), and the LLM is 256 wide (so the seed's resampler is 256 wide with 256 / 128 = 2 heads).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tiny import make_tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM

VISION_WIDTH, VISION_LAYERS, VISION_HEADS, MLP_RATIO = 48, 2, 2, 2.0
IMAGE, PATCH = 32, 8  # a 4 x 4 patch grid; the trunk's 256 position rows are resized to it on every forward
OUTPUT_DIM = 80
LLM_HIDDEN = 256
NUM_QUERIES = 256  # the seed's VLCrossAttention always has 256 queries
SEED_POSITIONS = 256
QWEN_VL_TAG_COUNT = 9  # <ref> </ref> <box> </box> <quad> </quad> <img> </img> <imgpad>
IMG_TAG_OFFSET = 6  # <img> is the seventh of them
LN_EPS = 1e-6


def _random(generator: torch.Generator):
    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    return rnd


# ---- Qwen-VL-visual/ -----------------------------------------------------------------------------------------
def seed_visual_state(width: int = VISION_WIDTH, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The state dict of the seed's VisionTransformer (trunk only: no attn_pool, ln_post, proj)."""
    rnd = _random(torch.Generator().manual_seed(1))
    mlp = int(width * MLP_RATIO)
    state = {
        "conv1.weight": rnd(width, 3, PATCH, PATCH),
        "positional_embedding": rnd(SEED_POSITIONS, width, scale=width**-0.5),
        "ln_pre.weight": 1 + rnd(width),
        "ln_pre.bias": rnd(width),
    }
    for i in range(VISION_LAYERS):
        b = f"transformer.resblocks.{i}."
        state |= {
            b + "ln_1.weight": 1 + rnd(width), b + "ln_1.bias": rnd(width),
            b + "ln_2.weight": 1 + rnd(width), b + "ln_2.bias": rnd(width),
            b + "attn.in_proj.weight": rnd(3 * width, width), b + "attn.in_proj.bias": rnd(3 * width),
            b + "attn.out_proj.weight": rnd(width, width), b + "attn.out_proj.bias": rnd(width),
            b + "mlp.c_fc.weight": rnd(mlp, width), b + "mlp.c_fc.bias": rnd(mlp),
            b + "mlp.c_proj.weight": rnd(width, mlp), b + "mlp.c_proj.bias": rnd(width),
        }
    return {k: v.to(dtype) for k, v in state.items()}


def visual_config(image_start_id: int, width: int = VISION_WIDTH) -> dict:
    return {
        "heads": VISION_HEADS, "image_size": IMAGE, "image_start_id": image_start_id, "layers": VISION_LAYERS,
        "mlp_ratio": MLP_RATIO, "output_dim": OUTPUT_DIM, "patch_size": PATCH, "width": width,
    }


def write_visual_folder(path: Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "visual_config.json").write_text(json.dumps(config))
    torch.save(state, path / "visual.bin")
    return path


def bicubic_positions(table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The seed's get_abs_pos: a square table resized (bicubic, float32) to sqrt(num_tokens) per side."""
    src, dst = int(math.sqrt(table.shape[0])), int(math.sqrt(num_tokens))
    if src == dst:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)


def seed_trunk_forward(state: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """The seed's VisionTransformer.forward: last block's tokens, no final norm (sequence-first, as it runs)."""
    sd = {k: v.float() for k, v in state.items()}
    width = sd["conv1.weight"].shape[0]
    x = F.conv2d(pixels, sd["conv1.weight"], stride=PATCH).flatten(2).permute(0, 2, 1)
    x = x + bicubic_positions(sd["positional_embedding"], x.shape[1])
    x = F.layer_norm(x, (width,), sd["ln_pre.weight"], sd["ln_pre.bias"], eps=LN_EPS).permute(1, 0, 2)
    head = width // VISION_HEADS
    for i in range(VISION_LAYERS):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"], eps=LN_EPS)
        length, batch = h.shape[:2]
        # in_proj's output is laid out per head as [q_h, k_h, v_h]
        mixed = F.linear(h, sd[b + "attn.in_proj.weight"], sd[b + "attn.in_proj.bias"])
        q, k, v = mixed.view(length, batch, VISION_HEADS, 3 * head).split(head, dim=-1)
        q, k, v = (t.reshape(length, batch * VISION_HEADS, head).transpose(0, 1) for t in (q, k, v))
        probs = torch.softmax((q / math.sqrt(head)) @ k.transpose(1, 2), dim=-1)
        context = (probs @ v).view(batch, VISION_HEADS, length, head).permute(2, 0, 1, 3).reshape(length, batch, width)
        x = x + F.linear(context, sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"], eps=LN_EPS)
        h = F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    return x.permute(1, 0, 2)


# ---- mm_projector.bin ----------------------------------------------------------------------------------------
def seed_projector_state(kind: str, vision_width: int = VISION_WIDTH, hidden: int = LLM_HIDDEN,
                         dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The seed's mm_projector's own state dict (no prefix), as llava/model/multimodal_projector/builder.py builds
    it: nn.Linear, nn.Sequential(Linear, GELU, Linear, ...), IdentityMap, or VLCrossAttention."""
    rnd = _random(torch.Generator().manual_seed(2))
    if kind == "identity":
        return {}
    if kind == "linear":
        state = {"weight": rnd(hidden, vision_width), "bias": rnd(hidden)}
    elif kind.startswith("mlp"):
        depth = int(kind[3 : kind.index("x")])
        state = {"0.weight": rnd(hidden, vision_width), "0.bias": rnd(hidden)}
        for i in range(1, depth):
            state |= {f"{2 * i}.weight": rnd(hidden, hidden), f"{2 * i}.bias": rnd(hidden)}
    elif kind == "cross_attn":
        a = "attn_pool."
        state = {
            a + "pos_embed": rnd(NUM_QUERIES, hidden, scale=1.0),  # trained-looking, not the sin-cos table
            a + "query": rnd(NUM_QUERIES, hidden),
            a + "attn.in_proj_weight": rnd(3 * hidden, hidden), a + "attn.in_proj_bias": rnd(3 * hidden),
            a + "attn.out_proj.weight": rnd(hidden, hidden), a + "attn.out_proj.bias": rnd(hidden),
            a + "ln_q.weight": 1 + rnd(hidden), a + "ln_q.bias": rnd(hidden),
            a + "ln_kv.weight": 1 + rnd(hidden), a + "ln_kv.bias": rnd(hidden),
            "ln_post.weight": 1 + rnd(hidden), "ln_post.bias": rnd(hidden),
            "proj": rnd(hidden, hidden, scale=hidden**-0.5),
        }
        if vision_width != hidden:  # the seed's Resampler has kv_proj only when the widths differ
            state[a + "kv_proj.weight"] = rnd(hidden, vision_width)
    else:
        raise ValueError(kind)
    return {k: v.to(dtype) for k, v in state.items()}


def fusevlm_name(kind: str, seed_key: str) -> str:
    """Where each of the seed's projector tensors belongs in fusevlm's projector (written out by hand)."""
    if kind == "linear":
        return "linear." + seed_key
    if kind.startswith("mlp"):
        return "mlp." + seed_key
    return seed_key.removeprefix("attn_pool.")


def seed_projector_forward(kind: str, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The seed's projector forward on features x (B, N, vision_width), from its state dict (no prefix)."""
    sd = {k: v.float() for k, v in state.items()}
    if kind == "identity":
        return x
    if kind == "linear":
        return F.linear(x, sd["weight"], sd["bias"])
    if kind.startswith("mlp"):
        depth = int(kind[3 : kind.index("x")])
        for i in range(depth):
            x = F.linear(x if i == 0 else F.gelu(x), sd[f"{2 * i}.weight"], sd[f"{2 * i}.bias"])
        return x
    a = "attn_pool."
    hidden = sd["proj"].shape[0]
    heads, head = hidden // 128, 128
    pos = sd[a + "pos_embed"]
    kv = F.linear(x, sd[a + "kv_proj.weight"]) if a + "kv_proj.weight" in sd else x
    kv = F.layer_norm(kv, (hidden,), sd[a + "ln_kv.weight"], sd[a + "ln_kv.bias"], eps=LN_EPS)
    q = F.layer_norm(sd[a + "query"], (hidden,), sd[a + "ln_q.weight"], sd[a + "ln_q.bias"], eps=LN_EPS)
    w_q, w_k, w_v = sd[a + "attn.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = sd[a + "attn.in_proj_bias"].chunk(3)
    queries = F.linear(q + pos, w_q, b_q)  # (M, hidden), the same for every image
    keys = F.linear(kv + bicubic_positions(pos, kv.shape[1]), w_k, b_k)  # (B, N, hidden)
    values = F.linear(kv, w_v, b_v)
    outputs = []
    for h in range(heads):
        part = slice(h * head, (h + 1) * head)
        scores = queries[:, part] @ keys[..., part].transpose(1, 2) / math.sqrt(head)  # (B, M, N)
        outputs.append(torch.softmax(scores, dim=-1) @ values[..., part])
    out = F.linear(torch.cat(outputs, dim=-1), sd[a + "attn.out_proj.weight"], sd[a + "attn.out_proj.bias"])
    out = F.layer_norm(out, (hidden,), sd["ln_post.weight"], sd["ln_post.bias"], eps=LN_EPS)
    return out @ sd["proj"]


# ---- the LLM and a release folder -----------------------------------------------------------------------------
QWEN_SPECIALS = 3 + 205  # <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0..204|>
# The seed's LlavaQWenConfig adds LLaVA's keys to Qwen v1's config.json (llava/model/llava_arch.py).
LLAVA_KEYS = {
    "model_type": "llava_qwen", "mm_vision_tower": "/mnt/project/LLAVA/Qwen-VL-visual/", "use_mm_proj": True,
    "mm_projector_type": "cross_attn", "mm_hidden_size": VISION_WIDTH, "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch", "image_aspect_ratio": "None", "image_grid_pinpoints": None,
    "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
}


def qwen_v1_llm_config(num_ranks: int, **overrides) -> dict:
    """Qwen-14B's config.json keys at toy size: 256 wide, 2 heads of 128 (kv_channels), room for Qwen-VL's tags."""
    from qwen_v1_reference import qwen_v1_config

    vocab = num_ranks + QWEN_SPECIALS + QWEN_VL_TAG_COUNT
    return qwen_v1_config(
        vocab + (-vocab % 16), hidden_size=LLM_HIDDEN, num_attention_heads=2, kv_channels=128, intermediate_size=640,
        num_hidden_layers=2, seq_length=1024, max_position_embeddings=8192, **overrides,
    )


def write_qwen_v1_llm(path: Path, vocab_file: Path, llava: bool = False,
                      beside: dict[str, torch.Tensor] | None = None,
                      answers_a: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """A tiny Qwen v1 LLM folder (Qwen/Qwen-14B's layout); ``llava``: saved as the seed's LlavaQWen would (its config
    keys), ``beside``: more tensors in its shards (the seed's mm_projector). Returns (v1 state dict, config).

    ``answers_a``: weights whose every greedy answer is "A" (hidden dim 0 is +10 for every token but "A", -10 for
    "A", no layer writes to it, and only the logits of "A" (+) and <|endoftext|> (-) read it), so commands that
    generate finish fast with an answer every scorer reads.
    """
    from qwen_v1_reference import qwen_v1_weights, write_qwen_v1_folder

    num_ranks = sum(1 for line in vocab_file.read_text().splitlines() if line.strip())
    config = qwen_v1_llm_config(num_ranks)
    state = qwen_v1_weights(config, seed=7)
    if answers_a:
        letter_a = ord("A")  # byte-level ranks 0-255 are the bytes
        state["transformer.wte.weight"][:, 0] = 10.0
        state["transformer.wte.weight"][letter_a, 0] = -10.0
        for i in range(config["num_hidden_layers"]):
            state[f"transformer.h.{i}.attn.c_proj.weight"][0] = 0.0
            state[f"transformer.h.{i}.mlp.c_proj.weight"][0] = 0.0
        state["transformer.ln_f.weight"] = torch.eye(config["hidden_size"])[0]
        state["lm_head.weight"] = torch.zeros_like(state["lm_head.weight"])
        state["lm_head.weight"][letter_a, 0] = 1.0
        state["lm_head.weight"][num_ranks, 0] = -1.0  # <|endoftext|>
    write_qwen_v1_folder(path, {**state, **(beside or {})}, {**config, **(LLAVA_KEYS if llava else {})}, vocab_file,
                         generation={"chat_format": "chatml", "eos_token_id": num_ranks, "max_new_tokens": 512})
    return state, config


def image_start_id_for(llm: Path) -> int:
    """Where <img> is in the seed's tokenizer: Qwen-VL's tags follow Qwen v1's specials, <img> the seventh."""
    num_ranks = sum(1 for line in (llm / "qwen.tiktoken").read_text().splitlines() if line.strip())
    return num_ranks + QWEN_SPECIALS + IMG_TAG_OFFSET


def write_release(path: Path, vocab_file: Path, answers_a: bool = False) -> Path:
    """A CodeFuse-VLM-14B-shaped release folder: the LLM at the top (the seed's LlavaQWen save of Qwen v1, its
    shards also holding a projector), Qwen-VL-visual/, mm_projector/mm_projector.bin (another projector)."""
    in_shards = {f"transformer.mm_projector.{k}": v * 2 for k, v in seed_projector_state("cross_attn").items()}
    write_qwen_v1_llm(path, vocab_file, llava=True, beside=in_shards, answers_a=answers_a)
    write_visual_folder(path / "Qwen-VL-visual", seed_visual_state(), visual_config(image_start_id_for(path)))
    (path / "mm_projector").mkdir()
    state = seed_projector_state("cross_attn")
    torch.save({f"transformer.mm_projector.{k}": v for k, v in state.items()}, path / "mm_projector/mm_projector.bin")
    return path


def write_llm(path: Path) -> Path:
    """A tiny Qwen2-format LLM with a byte-level BPE tokenizer (as an LLM in transformers' own format comes)."""
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=300, hidden_size=LLM_HIDDEN, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False,
    )).save_pretrained(path)
    make_tokenizer(path)
    return path


# ---- a LoRA output folder ---------------------------------------------------------------------------------------
def write_seed_lora(
    path: Path,
    base: dict[str, torch.Tensor],
    modules: list[str],
    non_lora: dict[str, torch.Tensor],
    r: int = 4,
    alpha: int = 8,
) -> dict[str, torch.Tensor]:
    """What the seed's train.py leaves with lora_enable: PEFT's adapter_config.json + adapter_model.bin (keys under
    base_model.model.) and non_lora_trainables.bin. Returns each adapted weight as the merge must make it:
    W + alpha / r * B @ A (``base`` holds the weights W by the adapter's module names)."""
    path.mkdir(parents=True, exist_ok=True)
    rnd = _random(torch.Generator().manual_seed(6))
    adapter, merged = {}, {}
    for module in modules:
        weight = base[f"{module}.weight"]
        a, b = rnd(r, weight.shape[1]), rnd(weight.shape[0], r)
        adapter[f"base_model.model.{module}.lora_A.weight"] = a
        adapter[f"base_model.model.{module}.lora_B.weight"] = b
        merged[f"{module}.weight"] = weight + (alpha / r) * (b @ a)
    torch.save(adapter, path / "adapter_model.bin")
    targets = sorted({m.rsplit(".", 1)[1] for m in modules})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.05,
        "target_modules": targets, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "modules_to_save": None, "base_model_name_or_path": "/mnt/user/Qwen-14B-Chat-VL",
    }))
    torch.save(non_lora, path / "non_lora_trainables.bin")
    (path / "config.json").write_text(json.dumps({"model_type": "llava_qwen"}))  # the seed saves its config too
    return merged
