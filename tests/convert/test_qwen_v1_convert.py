"""``convert_qwen_v1``: a tiny Qwen v1 folder in the published layout becomes a Qwen2 folder that transformers
loads without remote code and that computes what Qwen v1's architecture computes (reference forward in
qwen_v1_reference.py)."""

import json
import logging

import pytest
import tiktoken
import torch
from qwen_v1_reference import (
    PATTERN,
    SPECIALS,
    qwen_v1_config,
    qwen_v1_weights,
    reference_greedy,
    reference_logits,
    write_qwen_v1_folder,
)
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2ForCausalLM

from fusevlm.cli import main
from fusevlm.models.qwen_v1 import (
    QwenV1ConversionError,
    convert_qwen_v1,
    qwen2_config_to_qwen_v1,
    qwen2_state_dict_to_qwen_v1,
    qwen_v1_config_to_qwen2,
    qwen_v1_state_dict_to_qwen2,
)

# Qwen-14B-Chat's generation_config.json, with its sampling settings.
CHAT_GENERATION = {
    "chat_format": "chatml", "eos_token_id": 151643, "pad_token_id": 151643, "max_window_size": 6144,
    "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.1,
    "transformers_version": "4.31.0",
}


@pytest.fixture(scope="module")
def v1(qwen_ranks):
    # The embedding has padding rows past the tokenizer, as Qwen-14B's 152064 > 151851.
    config = qwen_v1_config(vocab_size=len(qwen_ranks) + len(SPECIALS) + 40)
    return config, qwen_v1_weights(config)


@pytest.fixture(scope="module")
def converted(v1, qwen_ranks, qwen_vocab_file, tmp_path_factory):
    config, sd = v1
    root = tmp_path_factory.mktemp("qwen-v1")
    eos = len(qwen_ranks)  # <|endoftext|>
    generation = {**CHAT_GENERATION, "eos_token_id": eos, "pad_token_id": eos}
    source = write_qwen_v1_folder(root / "Qwen-tiny", sd, config, qwen_vocab_file, shards=3, generation=generation)
    # A small shard limit so the output is sharded too, as a 14B model's is.
    return convert_qwen_v1(source, root / "Qwen-tiny-qwen2", max_shard_bytes=200_000, progress=False)


@pytest.fixture(scope="module")
def model(converted):
    return AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()


def test_the_folder_loads_as_native_qwen2_with_the_mapped_config(converted, model):
    assert type(model) is Qwen2ForCausalLM  # no trust_remote_code anywhere
    assert len(list(converted.glob("model-*-of-*.safetensors"))) > 1
    config = model.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 96, 3)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 4)
    assert config.rope_parameters["rope_theta"] == 20000.0
    assert config.rms_norm_eps == 1e-5
    assert config.max_position_embeddings == 32  # seq_length: where the conversion is exact
    assert config.use_sliding_window is False
    assert config.qwen_v1_long_context == {"use_dynamic_ntk": True, "use_logn_attn": True, "max_position_embeddings": 128}


def test_logits_equal_the_reference_forward(v1, model):
    config, sd = v1
    ids = torch.randint(0, config["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    expected = reference_logits(sd, config, ids)
    assert expected.abs().max() > 1  # logits of a size where a wrong weight would show
    assert (logits - expected).abs().max() <= 1e-5


def test_greedy_generation_equals_the_reference(v1, model, converted, qwen_ranks):
    config, sd = v1
    prompt = [5, 300, 17, 420, 99, 250, 8, 61]
    stop = {len(qwen_ranks), len(qwen_ranks) + 1, len(qwen_ranks) + 2}  # <|endoftext|>, <|im_start|>, <|im_end|>
    expected = reference_greedy(sd, config, prompt, max_new_tokens=20, stop=stop)
    # Greedy without the chat model's repetition penalty (its generation config carries one over).
    out = model.generate(torch.tensor([prompt]), do_sample=False, repetition_penalty=1.0, max_new_tokens=20)
    assert out[0].tolist() == expected
    assert len(expected) > len(prompt) + 5


def test_past_seq_length_the_long_context_rules_differ_and_are_warned(v1, model, qwen_vocab_file, tmp_path, caplog):
    config, sd = v1
    ids = torch.randint(0, config["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids).logits - reference_logits(sd, config, ids)).abs().max() > 1e-2
    source = write_qwen_v1_folder(tmp_path / "in", sd, config, qwen_vocab_file, shards=1)
    with caplog.at_level(logging.WARNING):
        convert_qwen_v1(source, tmp_path / "out", progress=False)
    assert "use_dynamic_ntk and use_logn_attn" in caplog.text and "seq_length=32" in caplog.text
    caplog.clear()
    quiet = {**config, "use_dynamic_ntk": False, "use_logn_attn": False}
    source = write_qwen_v1_folder(tmp_path / "in2", sd, quiet, qwen_vocab_file, shards=1)
    with caplog.at_level(logging.WARNING):
        convert_qwen_v1(source, tmp_path / "out2", progress=False)
    assert "use_dynamic_ntk" not in caplog.text
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path / "out2", dtype=torch.float32)
    with torch.no_grad():  # without the rules, the two agree at any length
        assert (model2(ids).logits - reference_logits(sd, quiet, ids)).abs().max() <= 1e-5


def test_tokenizer_and_generation_config_are_saved_with_the_model(converted, qwen_ranks):
    tokenizer = AutoTokenizer.from_pretrained(converted)
    reference = tiktoken.Encoding(
        "qwen-test", pat_str=PATTERN, mergeable_ranks=qwen_ranks,
        special_tokens={t: len(qwen_ranks) + i for i, t in enumerate(SPECIALS)},
    )
    text = "<|im_start|>user\n模型 reads code: return x * 2<|im_end|>"
    assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text, allowed_special="all")
    assert tokenizer.model_max_length == 32
    # A chat model (chat_format chatml) gets ChatML, and stops where Qwen's own generate() stopped.
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    generation = GenerationConfig.from_pretrained(converted)
    eos = len(qwen_ranks)
    assert generation.eos_token_id == [eos, eos + 2, eos + 1]
    assert (generation.pad_token_id, generation.top_p, generation.top_k, generation.repetition_penalty) == (
        eos, 0.8, 0, 1.1)
    assert not hasattr(generation, "max_window_size") and not hasattr(generation, "chat_format")


def test_state_dict_round_trip_is_bit_identical(v1):
    config, sd = v1
    sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    qwen2 = qwen_v1_state_dict_to_qwen2(sd)
    assert len(qwen2) == 2 + 1 + 3 * 12  # embed, norm, head; 12 tensors per layer
    hidden = config["hidden_size"]
    # q, k, v are the c_attn rows in that order (weights and biases), gate is w2 and up is w1.
    layer = "model.layers.1."
    assert torch.equal(qwen2[layer + "self_attn.k_proj.weight"], sd["transformer.h.1.attn.c_attn.weight"][hidden:2 * hidden])
    assert torch.equal(qwen2[layer + "self_attn.v_proj.bias"], sd["transformer.h.1.attn.c_attn.bias"][2 * hidden:])
    assert torch.equal(qwen2[layer + "mlp.gate_proj.weight"], sd["transformer.h.1.mlp.w2.weight"])
    assert torch.equal(qwen2[layer + "mlp.up_proj.weight"], sd["transformer.h.1.mlp.w1.weight"])
    back = qwen2_state_dict_to_qwen_v1(qwen2)
    assert back.keys() == sd.keys()
    for key, tensor in sd.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    # The split tensors own their storage, so they save as safetensors.
    save_file({k: v.contiguous() for k, v in qwen2.items()}, "/dev/null")


def test_config_round_trip_restores_every_key_that_matters(v1):
    config, _ = v1
    runtime_only = {"auto_map", "bf16", "fp16", "fp32", "onnx_safe", "softmax_in_fp32", "tokenizer_class",
                    "transformers_version", "use_cache_kernel", "use_cache_quantization", "use_flash_attn"}
    expected = {k: v for k, v in config.items() if k not in runtime_only}
    assert qwen2_config_to_qwen_v1(qwen_v1_config_to_qwen2(config)) == expected


def test_a_native_qwen2_config_goes_to_v1_without_the_long_context_rules():
    v1 = qwen2_config_to_qwen_v1({"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100,
                                  "max_position_embeddings": 512})
    assert (v1["use_dynamic_ntk"], v1["use_logn_attn"], v1["seq_length"], v1["intermediate_size"]) == (
        False, False, 512, 192)
    with pytest.raises(QwenV1ConversionError, match="num_key_value_heads=2"):
        qwen2_config_to_qwen_v1({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rotary_pct": 0.5}, "rotary_pct=0.5"),
        ({"no_bias": False}, "no_bias=False"),
        ({"kv_channels": 32}, "kv_channels=32"),
        ({"use_dynamic_ntk_alpha": 2}, "use_dynamic_ntk_alpha"),
        ({"visual": {"width": 8}}, "'visual'"),
        ({"seq_length": None}, "seq_length"),
    ],
)
def test_configs_that_cannot_convert_exactly_are_refused_by_key(v1, change, named):
    config = {**v1[0], **change}
    if change.get("seq_length", 0) is None:
        del config["seq_length"]
    with pytest.raises(QwenV1ConversionError, match=named):
        qwen_v1_config_to_qwen2(config)


def test_unknown_and_missing_keys_are_refused_by_name(v1, qwen_vocab_file, tmp_path):
    config, sd = v1
    with pytest.raises(QwenV1ConversionError, match=r"transformer\.h\.0\.attn\.rotary_emb\.inv_freq"):
        qwen_v1_state_dict_to_qwen2({**sd, "transformer.h.0.attn.rotary_emb.inv_freq": torch.ones(8)})
    with pytest.raises(QwenV1ConversionError, match=r"transformer\.visual\.proj.*remove Qwen-VL"):
        qwen_v1_state_dict_to_qwen2({**sd, "transformer.visual.proj": torch.ones(8)})
    partial = {k: v for k, v in sd.items() if k != "transformer.h.2.attn.c_attn.bias"}
    with pytest.raises(QwenV1ConversionError, match=r"missing keys: transformer\.h\.2\.attn\.c_attn\.bias"):
        qwen_v1_state_dict_to_qwen2(partial)
    with pytest.raises(QwenV1ConversionError, match=r"model\.layers\.0\.self_attn\.o_proj\.bias"):
        qwen2_state_dict_to_qwen_v1({**qwen_v1_state_dict_to_qwen2(sd), "model.layers.0.self_attn.o_proj.bias": torch.ones(64)})

    # In a folder: a whole missing layer tensor, and a layer beyond num_hidden_layers.
    source = write_qwen_v1_folder(tmp_path / "missing", {k: v for k, v in sd.items() if k != "transformer.h.1.mlp.w1.weight"},
                                  config, qwen_vocab_file, shards=2)
    with pytest.raises(QwenV1ConversionError, match=r"weights lack transformer\.h\.1\.mlp\.w1\.weight"):
        convert_qwen_v1(source, tmp_path / "out", progress=False)
    source = write_qwen_v1_folder(tmp_path / "fewer", sd, {**config, "num_hidden_layers": 2}, qwen_vocab_file)
    with pytest.raises(QwenV1ConversionError, match=r"2-layer Qwen v1 LLM: transformer\.h\.2\."):
        convert_qwen_v1(source, tmp_path / "out", progress=False)
    source = write_qwen_v1_folder(tmp_path / "narrow", sd, {**config, "intermediate_size": 160}, qwen_vocab_file)
    with pytest.raises(QwenV1ConversionError, match=r"mlp\.up_proj\.weight has shape \(96, 64\), config\.json implies \(80, 64\)"):
        convert_qwen_v1(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "config.json").exists()


def test_bf16_bin_checkpoint_stays_bf16(v1, qwen_vocab_file, qwen_ranks, tmp_path):
    config, sd = v1
    bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    source = write_qwen_v1_folder(tmp_path / "in", bf16, {**config, "bf16": True}, qwen_vocab_file, shards=0)
    out = convert_qwen_v1(source, tmp_path / "out", progress=False)
    saved = load_file(out / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert torch.equal(saved["model.layers.0.self_attn.q_proj.weight"], bf16["transformer.h.0.attn.c_attn.weight"][:64])
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    # No generation_config.json in the source: the written one still stops on <|endoftext|>.
    generation = GenerationConfig.from_pretrained(out)
    assert (generation.eos_token_id, generation.pad_token_id) == (len(qwen_ranks), len(qwen_ranks))


def test_the_command_line(v1, qwen_vocab_file, tmp_path, capsys):
    config, sd = v1
    source = write_qwen_v1_folder(tmp_path / "Qwen-tiny", sd, config, qwen_vocab_file)
    assert main(["convert-llm", "qwen-v1", str(source), str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out") in capsys.readouterr().out
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "out")) is Qwen2ForCausalLM
    # The output folder is never overwritten; bad input is one line naming the file.
    assert main(["convert-llm", "qwen-v1", str(source), str(tmp_path / "out")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    (source / "qwen.tiktoken").unlink()
    assert main(["convert-llm", "qwen-v1", str(source), str(tmp_path / "out3")]) == 2
    assert "qwen.tiktoken: not found" in capsys.readouterr().err
