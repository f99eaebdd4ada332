"""Tiny checkpoints built from configs and saved to folders, so tests load them by path as users load real ones."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    ChineseCLIPVisionConfig,
    ChineseCLIPVisionModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
    SiglipVisionModel,
)

CORPUS = [
    "What color is the circle? red. What shape is it? square. How many? 2.",
    "a photo of a cat on a mat; the quick brown fox jumps over the lazy dog",
    "Describe the image. It shows three blue triangles and a green star.",
]
VOCAB = 300


def make_tokenizer(path: Path) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return path


def text_config(family: str):
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    if family == "llama":
        return LlamaConfig(
            intermediate_size=128,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            **common,
        )
    if family == "qwen2":
        return Qwen2Config(
            intermediate_size=128,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **common,
        )
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=512)
    raise ValueError(family)


def make_llm(path: Path, family: str = "llama") -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(text_config(family))
    model.save_pretrained(path)
    make_tokenizer(path)
    return path


VISION = {
    "clip": (CLIPVisionModel, CLIPVisionConfig),
    "siglip": (SiglipVisionModel, SiglipVisionConfig),
    "chinese_clip": (ChineseCLIPVisionModel, ChineseCLIPVisionConfig),
    "dinov2": (Dinov2Model, Dinov2Config),
}


def make_vision(path: Path, family: str, hidden: int = 32, image_size: int = 32, patch: int = 8) -> Path:
    torch.manual_seed(0)
    if family == "qwen_vl":
        return make_qwen_vl(path, width=hidden, image_size=image_size, patch=patch)
    model_cls, config_cls = VISION[family]
    config = config_cls(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )
    model_cls(config).save_pretrained(path)
    return path


def qwen_vl_state_dict(
    width: int = 32,
    layers: int = 2,
    image_size: int = 32,
    patch: int = 8,
    output_dim: int = 64,
    n_queries: int = 4,
    mlp_width: int = 64,
) -> dict[str, torch.Tensor]:
    """A Qwen-VL-shaped ``transformer.visual.*`` state dict with the real key names and shapes."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    grid = image_size // patch
    p = "transformer.visual."
    sd = {
        p + "conv1.weight": rnd(width, 3, patch, patch),
        p + "positional_embedding": rnd(grid * grid, width),
        p + "ln_pre.weight": 1 + rnd(width),
        p + "ln_pre.bias": rnd(width),
    }
    for i in range(layers):
        b = f"{p}transformer.resblocks.{i}."
        sd.update(
            {
                b + "ln_1.weight": 1 + rnd(width),
                b + "ln_1.bias": rnd(width),
                b + "ln_2.weight": 1 + rnd(width),
                b + "ln_2.bias": rnd(width),
                b + "attn.in_proj.weight": rnd(3 * width, width),
                b + "attn.in_proj.bias": rnd(3 * width),
                b + "attn.out_proj.weight": rnd(width, width),
                b + "attn.out_proj.bias": rnd(width),
                b + "mlp.c_fc.weight": rnd(mlp_width, width),
                b + "mlp.c_fc.bias": rnd(mlp_width),
                b + "mlp.c_proj.weight": rnd(width, mlp_width),
                b + "mlp.c_proj.bias": rnd(width),
            }
        )
    a = p + "attn_pool."
    sd.update(
        {
            a + "query": rnd(n_queries, output_dim),
            a + "pos_embed": rnd(n_queries, output_dim),
            a + "kv_proj.weight": rnd(output_dim, width),
            a + "attn.in_proj_weight": rnd(3 * output_dim, output_dim),
            a + "attn.in_proj_bias": rnd(3 * output_dim),
            a + "attn.out_proj.weight": rnd(output_dim, output_dim),
            a + "attn.out_proj.bias": rnd(output_dim),
            a + "ln_q.weight": 1 + rnd(output_dim),
            a + "ln_q.bias": rnd(output_dim),
            a + "ln_kv.weight": 1 + rnd(output_dim),
            a + "ln_kv.bias": rnd(output_dim),
            p + "ln_post.weight": 1 + rnd(output_dim),
            p + "ln_post.bias": rnd(output_dim),
            p + "proj": rnd(output_dim, output_dim),
        }
    )
    return sd


def make_qwen_vl(
    path: Path,
    width: int = 32,
    image_size: int = 32,
    patch: int = 8,
    output_dim: int = 64,
    n_queries: int = 4,
) -> Path:
    """A tiny Qwen-VL checkpoint folder: config.json with a 'visual' section + safetensors (visual part only)."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    sd = qwen_vl_state_dict(
        width=width,
        image_size=image_size,
        patch=patch,
        output_dim=output_dim,
        n_queries=n_queries,
        mlp_width=2 * width,
    )
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    config = {
        "model_type": "qwen",
        "architectures": ["QWenLMHeadModel"],
        "visual": {
            "heads": 2,
            "image_size": image_size,
            "layers": 2,
            "mlp_ratio": 2.0,
            "output_dim": output_dim,
            "patch_size": patch,
            "width": width,
            "n_queries": n_queries,
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    return path
