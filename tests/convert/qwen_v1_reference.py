"""A tiny Qwen v1 written from its published architecture, independent of fusevlm: weights in v1's key layout,
a reference forward, a byte-level BPE vocabulary in ``qwen.tiktoken`` format, and the on-disk folder layout of
Qwen/Qwen-7B and Qwen/Qwen-14B (config.json with Qwen's keys, sharded safetensors with an index)."""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from pathlib import Path

import regex
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# Qwen v1's published split pattern and special tokens, written out here rather than imported from fusevlm.
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Vision-language models read images and text together.\n"
    "def train(model, data):\n    for batch in data:\n        loss = model(batch)\n        loss.backward()\n"
    "    return loss\n"
    "我们在框架下使用视觉编码器和语言大模型训练了多模态模型。这个模型可以回答关于图片的问题。\n"
    "if (x != 0) { return x * 2; } // a comment about 12345 and 3.14159\n"
    "人工智能正在改变世界，模型的能力越来越强。 \"quoted\" it's we're they'll I'm\n"
    "class Encoder(nn.Module):\n    def forward(self, images):\n        return self.proj(images)  # 投影\n"
) * 4


def train_byte_bpe(corpus: str, num_merges: int) -> dict[bytes, int]:
    """Byte-level BPE trained on ``corpus`` split by PATTERN: ranks 0-255 are the bytes, then each merge in the
    order learned (most frequent pair first, ties broken by the pair's bytes). Deterministic."""
    words = Counter(piece.encode() for piece in regex.findall(PATTERN, corpus))
    ranks = {bytes([b]): b for b in range(256)}
    pieces = {word: [bytes([b]) for b in word] for word in words}
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            parts = pieces[word]
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = best[0] + best[1]
        ranks.setdefault(merged, len(ranks))
        for word, parts in pieces.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            pieces[word] = out
    return ranks


def write_tiktoken(path: Path, ranks: dict[bytes, int]) -> Path:
    lines = [f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in sorted(ranks.items(), key=lambda x: x[1])]
    path.write_text("".join(lines))
    return path


# ---- the model ---------------------------------------------------------------------------------------------
def qwen_v1_config(vocab_size: int, **overrides) -> dict:
    """A config.json as Qwen/Qwen-14B publishes it (same keys), at toy size; non-default rotary base and eps so
    a mapping that ignored them would show."""
    config = {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "attn_dropout_prob": 0.0,
        "bf16": False,
        "emb_dropout_prob": 0.0,
        "fp16": False,
        "fp32": False,
        "hidden_size": 64,
        "intermediate_size": 192,  # w1 + w2: each projection is 96 wide
        "initializer_range": 0.02,
        "kv_channels": 16,
        "layer_norm_epsilon": 1e-5,
        "max_position_embeddings": 128,
        "model_type": "qwen",
        "no_bias": True,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "onnx_safe": None,
        "rotary_emb_base": 20000,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": 32,
        "softmax_in_fp32": False,
        "tie_word_embeddings": False,
        "tokenizer_class": "QWenTokenizer",
        "transformers_version": "4.32.0",
        "use_cache": True,
        "use_cache_kernel": False,
        "use_cache_quantization": False,
        "use_dynamic_ntk": True,
        "use_flash_attn": "auto",
        "use_logn_attn": True,
        "vocab_size": vocab_size,
    }
    config.update(overrides)
    return config


def qwen_v1_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights in v1's layout, with non-zero c_attn biases and non-unit norm weights."""
    g = torch.Generator().manual_seed(seed)
    hidden, width, vocab = config["hidden_size"], config["intermediate_size"] // 2, config["vocab_size"]

    def rand(*shape, scale):
        return torch.randn(*shape, generator=g) * scale

    sd = {"transformer.wte.weight": rand(vocab, hidden, scale=1.0)}
    for i in range(config["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = 1 + rand(hidden, scale=0.2)
        sd[p + "attn.c_attn.weight"] = rand(3 * hidden, hidden, scale=hidden**-0.5)
        sd[p + "attn.c_attn.bias"] = rand(3 * hidden, scale=0.3)
        sd[p + "attn.c_proj.weight"] = rand(hidden, hidden, scale=hidden**-0.5)
        sd[p + "ln_2.weight"] = 1 + rand(hidden, scale=0.2)
        sd[p + "mlp.w1.weight"] = rand(width, hidden, scale=hidden**-0.5)
        sd[p + "mlp.w2.weight"] = rand(width, hidden, scale=hidden**-0.5)
        sd[p + "mlp.c_proj.weight"] = rand(hidden, width, scale=width**-0.5)
    sd["transformer.ln_f.weight"] = 1 + rand(hidden, scale=0.2)
    sd["lm_head.weight"] = rand(vocab, hidden, scale=hidden**-0.5)
    return sd


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@torch.no_grad()
def reference_logits(sd: dict[str, torch.Tensor], config: dict, ids: torch.Tensor) -> torch.Tensor:
    """Qwen v1's forward, as its architecture is published, in eval mode over a whole prompt (no cache):
    x += c_proj(attention(RMSNorm(x))) with q, k, v = split(c_attn(.)) (bias) and rotary on the full head;
    x += c_proj(w1(h) * silu(w2(h))) with h = RMSNorm(x); logits = lm_head(RMSNorm(x)).
    Past ``seq_length`` tokens the two long-context rules apply: a larger rotary base (dynamic NTK) and queries
    scaled by log_seq_length(position) (logn attention)."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    dim, eps, trained = hidden // heads, config["layer_norm_epsilon"], config["seq_length"]
    batch, length = ids.shape
    base = float(config["rotary_emb_base"])
    if config["use_dynamic_ntk"] and length > trained:
        alpha = max(2 ** math.ceil(math.log2(length / trained) + 1) - 1, 1)
        base *= alpha ** (dim / (dim - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]  # (1, T, 1, D)
    position = torch.arange(1, length + 1, dtype=torch.float32)
    logn = torch.where(position > trained, position.log() / math.log(trained), torch.ones(()))
    causal = torch.ones(length, length, dtype=torch.bool).tril()

    x = sd["transformer.wte.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        h = _rms_norm(x, sd[p + "ln_1.weight"], eps)
        qkv = h @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(batch, length, heads, dim) for t in qkv.split(hidden, dim=-1))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if config["use_logn_attn"]:
            q = q * logn[None, :, None, None]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim)
        scores = scores.masked_fill(~causal, float("-inf"))
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, length, hidden)
        x = x + attended @ sd[p + "attn.c_proj.weight"].T
        h = _rms_norm(x, sd[p + "ln_2.weight"], eps)
        a1, a2 = h @ sd[p + "mlp.w1.weight"].T, h @ sd[p + "mlp.w2.weight"].T
        x = x + (a1 * F.silu(a2)) @ sd[p + "mlp.c_proj.weight"].T
    return _rms_norm(x, sd["transformer.ln_f.weight"], eps) @ sd["lm_head.weight"].T


def reference_greedy(sd, config, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
    ids = list(prompt)
    for _ in range(max_new_tokens):
        token = int(reference_logits(sd, config, torch.tensor([ids]))[0, -1].argmax())
        ids.append(token)
        if token in stop:
            break
    return ids


# ---- the folder --------------------------------------------------------------------------------------------
def write_qwen_v1_folder(
    folder: Path, sd: dict[str, torch.Tensor], config: dict, vocab_file: Path, *, shards: int = 2,
    generation: dict | None = None,
) -> Path:
    """Qwen/Qwen-14B's layout: config.json, model-0000i-of-0000n.safetensors + model.safetensors.index.json
    (or pytorch_model.bin when shards=0), qwen.tiktoken, generation_config.json, and the remote-code tokenizer
    config (which a converter must not need)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "qwen.tiktoken").write_bytes(Path(vocab_file).read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}, "model_max_length": 8192,
         "tokenizer_class": "QWenTokenizer"}))
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    if shards == 0:
        torch.save(sd, folder / "pytorch_model.bin")
        return folder
    keys = list(sd)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for n in range(shards):
        name = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[n * per:(n + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder
