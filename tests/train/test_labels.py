"""What is trained: exactly the assistant tokens the chat template marks; images and prompts never."""

import json

import pytest
from helpers import make_dataset
from PIL import Image

from fusevlm import build_vlm
from fusevlm.data.dataset import Source, load_mixture
from fusevlm.data.errors import DataError
from fusevlm.data.records import read_records
from fusevlm.data.report import BadSampleReport
from fusevlm.templates import BUILTIN_TEMPLATES, CHATML

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<image>\nWhat color is it?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "And the shape?"},
    {"role": "assistant", "content": "a square, with round corners"},
]


@pytest.fixture(scope="module")
def processor(checkpoints):
    _, processor = build_vlm(str(checkpoints("vision", "clip", hidden=64)), "linear", str(checkpoints("llm", "llama")))
    return processor


def hf_assistant_mask(processor, template):
    encoded = processor.tokenizer.apply_chat_template(
        CONVERSATION, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(encoded["input_ids"]), list(encoded["assistant_masks"])


def collapse_images(processor, ids, labels):
    """Undo the M-fold image expansion so positions line up with the tokenizer's own encoding."""
    out_ids, out_labels, skip = [], [], 0
    for token, label in zip(ids, labels, strict=True):
        if token == processor.image_token_id:
            assert label == -100
            if skip == 0:
                out_ids.append(token)
                out_labels.append(label)
                skip = processor.image_seq_length
            skip -= 1
            continue
        out_ids.append(token)
        out_labels.append(label)
    return out_ids, out_labels


@pytest.mark.parametrize("name", ["chatml", "llama3", "vicuna_v1", "llama2"])
def test_trained_positions_equal_the_templates_assistant_mask(processor, name):
    template = BUILTIN_TEMPLATES[name]
    tokens = processor.tokenize_chat(CONVERSATION, chat_template=template)
    m = processor.image_seq_length
    assert tokens["input_ids"].count(processor.image_token_id) == m
    ids, labels = collapse_images(processor, tokens["input_ids"], tokens["labels"])
    hf_ids, hf_mask = hf_assistant_mask(processor, template)
    assert ids == hf_ids
    assert [label != -100 for label in labels] == [bool(x) for x in hf_mask]
    assert sum(hf_mask) > 0
    trained_text = processor.tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    assert "red" in trained_text and "round corners" in trained_text
    assert "color" not in trained_text and "Be brief" not in trained_text


def test_template_without_generation_marks_is_masked_by_prefix_rendering(processor):
    unmarked = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    tokens = processor.tokenize_chat(CONVERSATION, chat_template=unmarked)
    marked = processor.tokenize_chat(CONVERSATION, chat_template=CHATML)
    assert tokens == marked


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
