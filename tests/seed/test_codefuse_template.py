"""The ``codefuse_qwen`` template renders what the seed fed CodeFuse-VLM-14B, trains only the answers, and is the
default for a model loaded from the seed's files (issue 16, item 4)."""

from __future__ import annotations

import pytest
from seed_files import NUM_QUERIES, image_start_id_for, seed_visual_state, visual_config, write_visual_folder

from fusevlm import FuseVLMProcessor, load_mixed_pretrained_model
from fusevlm.templates import CODEFUSE_QWEN

TWO_TURNS = [
    {"role": "user", "content": "<image>\nWhat is shown?"},
    {"role": "assistant", "content": "A red square."},
    {"role": "user", "content": "How many are there?"},
    {"role": "assistant", "content": "Two."},
]

# What the seed built for a Qwen LLM (llava/train/train.py: preprocess_qwen's fixed system turn, then each turn
# wrapped by preprocess_multimodal as ChatML; the image as "Picture 1:<img></img>\n" ahead of the words, as its
# eval scripts write it). Its tokenizer filled <img></img> with 256 pad tokens, which its model replaced by the
# resampler's 256 outputs; fusevlm writes its <image> placeholder there instead and expands it to those 256.
SEED_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nPicture 1:<img><image></img>\nWhat is shown?<|im_end|>\n"
    "<|im_start|>assistant\nA red square.<|im_end|>\n"
    "<|im_start|>user\nHow many are there?<|im_end|>\n"
    "<|im_start|>assistant\nTwo.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def loaded(release):
    tokenizer, model, image_processor, _ = load_mixed_pretrained_model(
        release, None, "qwen-vl-14b", release / "Qwen-VL-visual", "cross_attn", release / "mm_projector/mm_projector.bin",
        device_map=None)
    return FuseVLMProcessor(image_processor, tokenizer, model.config.image_seq_length, model.config.image_token)


def test_a_two_turn_conversation_renders_as_the_seed_built_it(loaded):
    assert loaded.chat_template == CODEFUSE_QWEN  # chosen by the seed's Qwen-VL-visual/ folder
    assert loaded.apply_chat_template(TWO_TURNS) == SEED_PROMPT
    first = TWO_TURNS[:1]
    assert loaded.apply_chat_template(first, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPicture 1:<img><image></img>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n")


def test_a_system_message_replaces_the_fixed_one_and_images_are_numbered(loaded):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Compare <image> and\n<image>"}]
    assert loaded.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        "Picture 1:<img><image></img>\nPicture 2:<img><image></img>\nCompare  and<|im_end|>\n")


def test_only_the_answers_and_their_end_tokens_are_trained(loaded):
    tokens = loaded.tokenize_chat(TWO_TURNS)
    trained = [t for t, label in zip(tokens["input_ids"], tokens["labels"], strict=True) if label != -100]
    assert loaded.tokenizer.decode(trained) == "A red square.<|im_end|>Two.<|im_end|>"


def test_the_image_sits_between_the_img_tags_at_the_seeds_ids(loaded, release):
    ids = loaded.tokenize_chat(TWO_TURNS)["input_ids"]
    start = image_start_id_for(release)
    at = ids.index(start)
    assert ids[at + 1 : at + 1 + NUM_QUERIES] == [loaded.image_token_id] * NUM_QUERIES
    assert ids[at + 1 + NUM_QUERIES] == start + 1  # </img>
    assert ids.count(loaded.image_token_id) == NUM_QUERIES


def test_a_tokenizer_whose_img_tag_is_not_the_seeds_is_refused(release, tmp_path):
    start = image_start_id_for(release)
    folder = write_visual_folder(tmp_path / "Qwen-VL-visual", seed_visual_state(), visual_config(start + 1))
    with pytest.raises(ValueError, match=rf"<img> and </img> are ids \[{start}, {start + 1}\], but .* "
                                         rf"image_start_id {start + 1}"):
        load_mixed_pretrained_model(release, None, None, folder, "cross_attn",
                                    release / "mm_projector/mm_projector.bin", device_map=None)


def test_another_template_can_be_asked_for_and_other_vision_towers_keep_the_tokenizers(release, checkpoints):
    tokenizer, _, _, _ = load_mixed_pretrained_model(
        release, None, None, release / "Qwen-VL-visual", "cross_attn", release / "mm_projector/mm_projector.bin",
        device_map=None, chat_template="chatml")
    assert "You are a helpful assistant" not in tokenizer.chat_template
    clip = checkpoints("vision", "clip", hidden=64)
    tokenizer, model, _, _ = load_mixed_pretrained_model(release, None, None, str(clip), "mlp2x_gelu", None,
                                                         device_map=None)
    assert tokenizer.chat_template != CODEFUSE_QWEN
    assert "<img>" not in tokenizer.get_vocab() and model.projector.name == "mlp{N}x_gelu"
    with pytest.raises(ValueError, match="unknown chat template 'qwen'"):
        load_mixed_pretrained_model(release, None, None, str(clip), "mlp2x_gelu", None, chat_template="qwen")
