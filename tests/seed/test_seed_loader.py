"""The seed README's loading snippet runs as written, and the seed's LoRA output folders load (issue 16, items 2-3)."""

from __future__ import annotations

import os

import pytest
import torch
from seed_files import (
    IMG_TAG_OFFSET,
    LLM_HIDDEN,
    NUM_QUERIES,
    fusevlm_name,
    seed_projector_state,
    seed_visual_state,
    visual_config,
    write_seed_lora,
    write_visual_folder,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from fusevlm import FuseVLMForConditionalGeneration, FuseVLMProcessor, load_mixed_pretrained_model

# The seed README's snippet, its import line pointed at fusevlm; nothing else changed.
README_SNIPPET = """
import os
from fusevlm import load_mixed_pretrained_model

model_path = '/pretrained/model/path'
tokenizer, model, image_processor, context_len = load_mixed_pretrained_model(model_path, None, 'qwen-vl-14b', os.path.join(model_path, 'Qwen-VL-visual'), 'cross_attn', os.path.join(model_path, 'mm_projector/mm_projector.bin'))
"""


def test_the_seed_readmes_snippet_runs_as_written(release):
    scope: dict = {}
    exec(README_SNIPPET.replace("/pretrained/model/path", str(release)), scope)  # noqa: S102 - our own text
    tokenizer, model, image_processor, context_len = (
        scope[k] for k in ("tokenizer", "model", "image_processor", "context_len"))
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert isinstance(model, FuseVLMForConditionalGeneration)
    assert context_len == 1024  # the LLM config's max_position_embeddings
    processor = FuseVLMProcessor(image_processor, tokenizer, model.config.image_seq_length, model.config.image_token)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    from PIL import Image

    inputs = processor(text=[prompt], images=[Image.new("RGB", (40, 30), (200, 20, 20))])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_the_loader_refuses_arguments_that_contradict_the_files(release, seed_llm, tmp_path):
    visual, projector = release / "Qwen-VL-visual", release / "mm_projector/mm_projector.bin"
    with pytest.raises(ValueError, match="model_name 'qwen-vl-14b-lora' says 'lora', but .* has no adapter_config"):
        load_mixed_pretrained_model(release, None, "qwen-vl-14b-lora", visual, "cross_attn", projector)
    with pytest.raises(ValueError, match="model_base is the LLM a LoRA folder adapts, but .* has no adapter_config"):
        load_mixed_pretrained_model(release, seed_llm, "qwen-vl-14b", visual, "cross_attn", projector)
    with pytest.raises(ValueError, match="load_8bit and load_4bit both set"):
        load_mixed_pretrained_model(release, None, None, visual, "cross_attn", projector, True, True)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="load_8bit / load_4bit need bitsandbytes"):
            load_mixed_pretrained_model(release, None, None, visual, "cross_attn", projector, load_4bit=True)


def test_a_bf16_load_puts_every_part_in_bf16(release):
    _, model, _, _ = load_mixed_pretrained_model(
        release, None, None, release / "Qwen-VL-visual", "cross_attn", release / "mm_projector/mm_projector.bin",
        device_map=None, dtype="bfloat16")
    assert model.language_model.dtype == torch.bfloat16
    assert model.projector.proj.dtype == torch.bfloat16
    stored = torch.load(release / "mm_projector/mm_projector.bin", weights_only=True)
    assert torch.equal(model.projector.pos_embed, stored["transformer.mm_projector.attn_pool.pos_embed"])


# ---- the seed's LoRA output folder ------------------------------------------------------------------------------
LORA_MODULES = [f"model.layers.{i}.{name}" for i in range(2)
                for name in ("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")]


@pytest.fixture(scope="module")
def visual_for_seed_llm(seed_llm, tmp_path_factory):
    """The seed's visual folder, its image_start_id where <img> lands in seed_llm's tokenizer."""
    start = len(AutoTokenizer.from_pretrained(seed_llm)) + IMG_TAG_OFFSET
    return write_visual_folder(tmp_path_factory.mktemp("visual") / "Qwen-VL-visual", seed_visual_state(),
                               visual_config(start))


@pytest.fixture(scope="module")
def lora_run(seed_llm, tmp_path_factory):
    """A seed LoRA run over a Llama-named LLM: the LLM was LlavaLlama's `model.`, so its projector is model.mm_projector."""
    base = AutoModelForCausalLM.from_pretrained(seed_llm).state_dict()
    projector = seed_projector_state("cross_attn")
    non_lora = {f"base_model.model.model.mm_projector.{k}": v for k, v in projector.items()}
    folder = tmp_path_factory.mktemp("lora") / "qwen-vl-14b-lora-sft"
    merged = write_seed_lora(folder, base, LORA_MODULES, non_lora)
    return folder, merged, projector


def test_a_lora_folder_is_merged_into_its_base_and_its_non_lora_trainables_loaded(lora_run, seed_llm,
                                                                                   visual_for_seed_llm):
    folder, merged, projector = lora_run
    _, model, _, _ = load_mixed_pretrained_model(
        folder, seed_llm, "qwen-vl-14b-lora", visual_for_seed_llm, "cross_attn", None)
    own = model.language_model.state_dict()
    base = AutoModelForCausalLM.from_pretrained(seed_llm).state_dict()
    for key, expected in merged.items():
        torch.testing.assert_close(own[key], expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(own[key], base[key])
    untouched = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(own[untouched], base[untouched])
    for key, value in projector.items():
        assert torch.equal(model.projector.state_dict()[fusevlm_name("cross_attn", key)], value.float()), key
    assert model.projector.proj.shape == (LLM_HIDDEN, LLM_HIDDEN) and model.config.image_seq_length == NUM_QUERIES


def test_a_lora_folder_and_a_projector_file_both_holding_projector_weights_is_ambiguous(
        lora_run, seed_llm, release, visual_for_seed_llm):
    folder, _, _ = lora_run
    with pytest.raises(ValueError, match=r"both .*non_lora_trainables\.bin and .*mm_projector\.bin hold projector"):
        load_mixed_pretrained_model(folder, seed_llm, "qwen-vl-14b-lora", visual_for_seed_llm, "cross_attn",
                                    release / "mm_projector/mm_projector.bin")
    with pytest.raises(ValueError, match="is a LoRA output folder: pass the LLM it adapts as model_base"):
        load_mixed_pretrained_model(folder, None, None, visual_for_seed_llm, "cross_attn", None)


def test_a_lora_adapter_on_modules_the_llm_does_not_have_is_refused(seed_llm, release, visual_for_seed_llm, tmp_path):
    base = {"transformer.h.0.attn.q.weight": torch.zeros(LLM_HIDDEN, LLM_HIDDEN)}
    write_seed_lora(tmp_path / "lora", base, ["transformer.h.0.attn.q"], non_lora={})
    with pytest.raises(ValueError, match=r"adapter_model\.bin: the LLM has no tensors transformer\.h\.0\.attn\.q\.weight"):
        load_mixed_pretrained_model(tmp_path / "lora", seed_llm, "lora", visual_for_seed_llm, "cross_attn",
                                    os.path.join(release, "mm_projector/mm_projector.bin"))


# ---- Qwen v1 LLMs: the release's, and a LoRA run over one ------------------------------------------------------
def v1_state_of(llm_folder):
    from qwen_v1_reference import qwen_v1_weights
    from seed_files import qwen_v1_llm_config

    num_ranks = sum(1 for line in (llm_folder / "qwen.tiktoken").read_text().splitlines() if line.strip())
    config = qwen_v1_llm_config(num_ranks)
    return qwen_v1_weights(config, seed=7), config


def test_the_releases_qwen_v1_llm_runs_as_qwen_v1_computes(release):
    from qwen_v1_reference import reference_logits

    tokenizer, model, _, context_len = load_mixed_pretrained_model(
        release, None, "qwen-vl-14b", release / "Qwen-VL-visual", "cross_attn", None, device_map=None)
    assert model.language_model.config.model_type == "qwen2" and context_len == 1024  # v1's seq_length
    state, config = v1_state_of(release)
    ids = tokenizer("def train(model, data): 我们在框架下", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.language_model(input_ids=ids).logits
    vocab = config["vocab_size"]  # the image token fusevlm added is a row past the checkpoint's
    torch.testing.assert_close(ours[..., :vocab], reference_logits(state, config, ids), rtol=1e-4, atol=1e-4)
    # no projector file given: the seed's loader keeps the projector saved with its LLM (here twice the file's)
    saved = torch.load(release / "mm_projector/mm_projector.bin", weights_only=True)
    assert torch.equal(model.projector.query, 2 * saved["transformer.mm_projector.attn_pool.query"].float())


V1_MODULES = [f"transformer.h.{i}.{name}" for i in range(2)
              for name in ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")]
# Where a v1 weight lives in the Qwen2 model (c_attn: q, k, v stacked on rows), written out by hand.
V1_TO_QWEN2 = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "attn.c_proj": ("self_attn.o_proj",), "mlp.w1": ("mlp.up_proj",), "mlp.w2": ("mlp.gate_proj",),
               "mlp.c_proj": ("mlp.down_proj",)}


def test_a_lora_run_over_a_qwen_v1_llm_merges_into_the_converted_weights(vocab_file, release, tmp_path):
    from seed_files import write_qwen_v1_llm

    base_state, _ = write_qwen_v1_llm(tmp_path / "Qwen-14B-Chat-VL", vocab_file)
    projector = seed_projector_state("cross_attn")
    non_lora = {f"base_model.model.transformer.mm_projector.{k}": v for k, v in projector.items()}
    merged = write_seed_lora(tmp_path / "qwen-vl-14b-lora", base_state, V1_MODULES, non_lora)
    _, model, _, _ = load_mixed_pretrained_model(
        tmp_path / "qwen-vl-14b-lora", tmp_path / "Qwen-14B-Chat-VL", "qwen-vl-14b-lora", release / "Qwen-VL-visual",
        "cross_attn", None, device_map=None)
    own = model.language_model.state_dict()
    for key, expected in merged.items():
        layer, name = key.removeprefix("transformer.h.").removesuffix(".weight").split(".", 1)
        targets = V1_TO_QWEN2[name]
        for target, part in zip(targets, expected.chunk(len(targets)), strict=True):
            torch.testing.assert_close(own[f"model.layers.{layer}.{target}.weight"], part, rtol=1e-5, atol=1e-6)
    assert torch.equal(own["model.layers.0.self_attn.q_proj.bias"], base_state["transformer.h.0.attn.c_attn.bias"][
        :LLM_HIDDEN])
    for key, value in projector.items():
        assert torch.equal(model.projector.state_dict()[fusevlm_name("cross_attn", key)], value.float()), key
