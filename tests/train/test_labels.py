"""What is trained: exactly the assistant tokens the chat template marks; images and prompts never."""

import copy
import json

import pytest
from helpers import make_dataset
from PIL import Image

from fusevlm import build_vlm
from fusevlm.data.dataset import Source, load_mixture
from fusevlm.data.errors import DataError
from fusevlm.data.records import read_records
from fusevlm.data.report import BadSampleReport
from fusevlm.processing import FuseVLMProcessor
from fusevlm.templates import BUILTIN_TEMPLATES, CHATML, has_generation_marks

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<image>\nWhat color is it?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "And the shape?"},
    {"role": "assistant", "content": "a square"},
]

# What must be trained, written by hand from each format: every assistant reply with its end-of-turn token, nothing
# of the system prompt, the questions, the role headers or the separators. One string per contiguous trained span.
# `plain` drops the user's words, so its two replies touch. Where a format puts a space between the header and the
# reply (vicuna_v1, llama2), a byte-level BPE may fold that space into the reply's first token (" a" is one token
# of the test tokenizer), as SentencePiece's "▁a" is in LLaVA's own masking: such a span may start with one space.
BUILTIN_EXPECTED = {
    "plain": (["red<|endoftext|>a square<|endoftext|>"], False),
    "vicuna_v1": (["red<|endoftext|>", "a square<|endoftext|>"], True),
    "chatml": (["red<|im_end|>", "a square<|im_end|>"], False),
    "llama2": (["red <|endoftext|>", "a square <|endoftext|>"], True),
    "llama3": (["red<|eot_id|>", "a square<|eot_id|>"], False),
    "codefuse_qwen": (["red<|im_end|>", "a square<|im_end|>"], False),  # the seed's Qwen-VL ChatML
}

# Hub chat templates without {% generation %} marks, written from each family's documented prompt format (the
# shape of the templates their tokenizers ship), with the family's special tokens added to the test tokenizer.
LLAMA3_HUB = (  # <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_HUB = (  # ChatML with Qwen2's default system prompt
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_HUB = (  # <s>[INST] q [/INST]a</s> [INST] q2 [/INST]  (Mistral-7B-Instruct v0.1; no system role)
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)
GEMMA_HUB = (  # <bos><start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\na<end_of_turn>\n  (no system role)
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# family: (template, bos, end of turn, other special tokens, has a system role, expected trained spans)
HUB_FORMATS = {
    "llama3": (LLAMA3_HUB, "<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"], True,
               ["red<|eot_id|>", "a square<|eot_id|>"]),
    "qwen2": (QWEN2_HUB, None, "<|im_end|>", [], True, ["red<|im_end|>", "a square<|im_end|>"]),
    "mistral": (MISTRAL_HUB, "<s>", "</s>", ["[INST]", "[/INST]"], False, ["red</s>", "a square</s>"]),
    "gemma": (GEMMA_HUB, "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], False,
              ["red<end_of_turn>", "a square<end_of_turn>"]),
}


@pytest.fixture(scope="module")
def processor(checkpoints):
    _, processor = build_vlm(str(checkpoints("vision", "clip", hidden=64)), "linear", str(checkpoints("llm", "llama")))
    return processor


def trained_spans(processor, tokens) -> list[str]:
    """The decoded text of each run of consecutive trained positions, after checking the image positions."""
    ids, labels = tokens["input_ids"], tokens["labels"]
    image_labels = [label for token, label in zip(ids, labels, strict=True) if token == processor.image_token_id]
    assert len(image_labels) == processor.image_seq_length  # one <image>, M positions ...
    assert set(image_labels) == {-100}  # ... none of them trained
    spans, run = [], []
    for token, label in [*zip(ids, labels, strict=True), (None, -100)]:
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            spans.append(processor.tokenizer.decode(run))
            run = []
    return spans


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_templates_train_each_reply_and_its_end_of_turn_only(processor, name):
    assert set(BUILTIN_EXPECTED) == set(BUILTIN_TEMPLATES)
    expected, space_before_reply = BUILTIN_EXPECTED[name]
    conversation = CONVERSATION if name != "plain" else CONVERSATION[1:]
    tokens = processor.tokenize_chat(conversation, chat_template=BUILTIN_TEMPLATES[name])
    spans = trained_spans(processor, tokens)
    if space_before_reply:
        spans = [span.removeprefix(" ") for span in spans]
    assert spans == expected


def hub_processor(processor, family):
    template, bos, end_of_turn, specials, _, _ = HUB_FORMATS[family]
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.add_tokens([t for t in (bos, end_of_turn, *specials) if t], special_tokens=True)
    if bos:
        tokenizer.bos_token = bos
    tokenizer.eos_token = end_of_turn
    return FuseVLMProcessor(processor.image_processor, tokenizer, processor.image_seq_length, chat_template=template)


@pytest.mark.parametrize("family", sorted(HUB_FORMATS))
def test_hub_templates_without_generation_marks_train_each_reply_and_its_end_of_turn_only(processor, family):
    hub = hub_processor(processor, family)
    assert not has_generation_marks(hub.chat_template)
    *_, has_system, expected = HUB_FORMATS[family]
    tokens = hub.tokenize_chat(CONVERSATION if has_system else CONVERSATION[1:])
    assert trained_spans(hub, tokens) == expected


def test_a_hub_template_that_does_not_render_prefix_by_prefix_is_refused(processor):
    counting = "{{ messages | length }}" + QWEN2_HUB  # a prefix renders another count: the replies cannot be located
    hub = FuseVLMProcessor(processor.image_processor, copy.deepcopy(processor.tokenizer),
                           processor.image_seq_length, chat_template=counting)
    with pytest.raises(ValueError, match="prefix by prefix"):
        hub.tokenize_chat(CONVERSATION)


def test_plain_alignment_format_trains_the_caption_and_its_end(processor):
    conversation = [{"role": "user", "content": "<image>\nDescribe the image."},
                    {"role": "assistant", "content": "a red square"}]
    tokens = processor.tokenize_chat(conversation, chat_template=BUILTIN_TEMPLATES["plain"])
    m = processor.image_seq_length
    assert tokens["input_ids"][:m] == [processor.image_token_id] * m  # the instruction is dropped
    trained = [t for t, label in zip(tokens["input_ids"], tokens["labels"], strict=True) if label != -100]
    assert trained == tokens["input_ids"][m:]
    assert processor.tokenizer.decode(trained) == "a red square" + processor.tokenizer.eos_token


def long_record(tmp_path, image_position):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img.png")
    filler = " ".join(["word"] * 200)
    human = f"{filler} <image>" if image_position == "late" else f"<image>\n{filler}"
    records = [
        {"id": "long", "image": "img.png", "conversations": [{"from": "human", "value": human},
                                                              {"from": "gpt", "value": "red"}]},
        {"id": "short", "image": "img.png", "conversations": [{"from": "human", "value": "<image>\ncolor?"},
                                                               {"from": "gpt", "value": "red"}]},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_a_record_whose_image_would_be_cut_is_skipped_and_counted(processor, tmp_path):
    path = long_record(tmp_path, "late")
    report = BadSampleReport()
    dataset = load_mixture([Source(str(path))], processor, model_max_length=64, on_bad_sample="skip", report=report)
    assert [dataset.sample(i)[1]["id"] for i in range(len(dataset))] == ["short"]
    assert report.reasons() == {"too_long": 1}
    assert "cut an image span" in report.to_dict()["datasets"][str(path)]["examples"][0]["message"]


def test_with_the_error_policy_the_long_record_is_named(processor, tmp_path):
    path = long_record(tmp_path, "late")
    with pytest.raises(DataError, match=r"record 0 \(id 'long'\).*cut an image span"):
        load_mixture([Source(str(path))], processor, model_max_length=64)


def test_a_long_answer_is_truncated_and_counted_but_an_answer_cut_away_entirely_is_not_trained(processor, tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img.png")
    long_answer = " ".join(["red"] * 300)
    records = [{"id": "chatty", "image": "img.png", "conversations": [
        {"from": "human", "value": "<image>\ncolor?"}, {"from": "gpt", "value": long_answer}]}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    dataset = load_mixture([Source(str(path))], processor, model_max_length=100, chat_template=CHATML)
    assert dataset.truncated == {str(path): 1}
    sample = dataset[0]
    assert len(sample["input_ids"]) == 100 and (sample["labels"] != -100).sum() > 0
    assert (sample["input_ids"] == processor.image_token_id).sum() == processor.image_seq_length
    (record,) = read_records(path)
    full = processor.tokenize_chat(record.messages, chat_template=CHATML)
    assert sample["input_ids"].tolist() == full["input_ids"][:100] and sample["labels"].tolist() == full["labels"][:100]
    first_trained = next(i for i, label in enumerate(full["labels"]) if label != -100)
    with pytest.raises(DataError, match="no assistant tokens left"):
        load_mixture([Source(str(path))], processor, model_max_length=first_trained, chat_template=CHATML)


def test_skipped_image_failures_travel_with_the_batch(processor, tmp_path):
    data = make_dataset(tmp_path, 4)
    (tmp_path / "images" / "train_1.png").write_bytes(b"not a png")
    source = Source(str(data), image_root=str(tmp_path / "images"))
    dataset = load_mixture([source], processor, model_max_length=128, on_bad_sample="skip")
    item = dataset[1]
    assert item["data_errors"] and item["data_errors"][0]["reason"] == "bad_image"
    assert "train_1.png" in item["data_errors"][0]["message"]
    assert "pixel_values" in item  # the next good sample was served instead
    with pytest.raises(DataError, match="train_1.png"):
        load_mixture([source], processor, model_max_length=128)[1]


TRIMMED = (  # generation tags with whitespace control on both sides, on lines of their own
    "{%- for message in messages %}\n"
    "  {%- if message['role'] == 'assistant' %}\n"
    "A:  {%- generation -%}   \n  {{ message['content'] }}{{ eos_token }}\n  {%- endgeneration -%}  \n!\n"
    "  {%- elif message['role'] == 'system' and message['content'] == 'boom' %}{{ raise_exception('no system') }}\n"
    "  {%- else %}\nU: {{ message['content'] }}\n"
    "  {%- endif %}\n"
    "{%- endfor %}"
)


@pytest.mark.parametrize("name", ["plain", "chatml", "llama3", "vicuna_v1", "llama2", "synthetic", "trimmed"])
def test_a_batch_is_labelled_as_transformers_labels_each_conversation(processor, name):
    from fusevlm.data.tokenizer import CHAT_TEMPLATE

    template = {**BUILTIN_TEMPLATES, "synthetic": CHAT_TEMPLATE, "trimmed": TRIMMED}[name]
    conversations = [CONVERSATION, CONVERSATION[1:3], [CONVERSATION[1], {"role": "assistant", "content": " spaced \n"}]]
    results = processor.tokenize_chats(conversations, chat_template=template)
    for conversation, (ids, labels) in zip(conversations, results, strict=True):
        expected = processor.tokenizer.apply_chat_template(
            conversation, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ids.tolist() == list(expected["input_ids"])
        assert labels.tolist() == [t if m else -100 for t, m in zip(expected["input_ids"], expected["assistant_masks"],
                                                                     strict=True)]


def test_a_template_error_belongs_to_its_conversation_only(processor):
    boom = [{"role": "system", "content": "boom"}, *CONVERSATION[1:3]]
    ok, failed, again = processor.tokenize_chats([CONVERSATION[1:3], boom, CONVERSATION], chat_template=TRIMMED)
    assert isinstance(failed, Exception) and "no system" in str(failed)
    assert ok[0].tolist() == processor.tokenize_chats([CONVERSATION[1:3]], chat_template=TRIMMED)[0][0].tolist()
    assert (again[1] != -100).sum() > 0
