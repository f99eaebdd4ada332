"""The training path (LM head and cross-entropy at trained positions only) equals the full-logits loss."""

import pytest
import tiny
import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from fusevlm import build_vlm
from fusevlm.models.vlm import FuseVLMCausalLMOutput

SAMPLES = [  # (prompt, answer, image colour or None)
    ("<image>\nWhat color is the circle?", " red. What shape is it? square.", (220, 30, 30)),
    ("Describe the image.", " It shows three blue triangles", None),
    ("<image>\nHow many?", " 2.", (30, 30, 220)),
]


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def vlm(checkpoints, family="llama", llm=None):
    torch.manual_seed(0)
    model, processor = build_vlm(
        str(checkpoints("vision", "clip", hidden=64)), "mlp2x_gelu", str(llm or checkpoints("llm", family))
    )
    return no_dropout(model).float(), processor


def encode(processor, model, prompt, answer, colour):
    """One sample, unpadded: input ids, labels (-100 on image and prompt tokens), its images."""
    images = [Image.new("RGB", (32, 32), colour)] if colour else []
    ids = processor(text=[prompt + answer], images=[images])["input_ids"][0]
    prompt_len = processor(text=[prompt], images=[images])["input_ids"].shape[1]
    labels = ids.clone()
    labels[:prompt_len] = -100
    assert (labels != -100).any()
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"] if images else None
    return ids, labels, pixels


def padded_batch(processor, model, samples=SAMPLES):
    encoded = [encode(processor, model, *s) for s in samples]
    length = max(len(ids) for ids, _, _ in encoded)
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.full((len(encoded), length), pad)
    labels = torch.full((len(encoded), length), -100)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, (ids, lab, _) in enumerate(encoded):
        input_ids[row, : len(ids)], labels[row, : len(ids)], attention_mask[row, : len(ids)] = ids, lab, 1
    pixels = torch.cat([p for _, _, p in encoded if p is not None])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels, "labels": labels}


def packed_batch(processor, model, samples=SAMPLES):
    """All samples in one row: position ids restart per sample, no attention mask, each sample's number."""
    encoded = [encode(processor, model, *s) for s in samples]
    return {
        "input_ids": torch.cat([ids for ids, _, _ in encoded])[None],
        "labels": torch.cat([lab for _, lab, _ in encoded])[None],
        "position_ids": torch.cat([torch.arange(len(ids)) for ids, _, _ in encoded])[None],
        "pixel_values": torch.cat([p for _, _, p in encoded if p is not None]),
        "attention_mask": None,
    }, torch.cat([torch.full((len(ids),), i) for i, (ids, _, _) in enumerate(encoded)])[None]


def loss_and_grads(model, batch, training, **kwargs):
    model.train(training)
    model.zero_grad()
    out = model(**batch, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same(full, fast, full_grads, fast_grads):
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.token_losses, full.token_losses, rtol=1e-5, atol=1e-5)
    assert set(fast_grads) == set(full_grads) and fast_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_training_loss_and_grads_equal_the_full_logits_ones(checkpoints, family):
    model, processor = vlm(checkpoints, family)
    assert model.trains_at_labelled_positions()
    batch = padded_batch(processor, model)
    full, full_grads = loss_and_grads(model, batch, training=False)
    fast, fast_grads = loss_and_grads(model, batch, training=True)
    assert isinstance(fast, FuseVLMCausalLMOutput) and fast.logits is None
    assert full.logits.shape[:2] == batch["input_ids"].shape
    assert fast.token_losses.shape == (3, batch["input_ids"].shape[1] - 1)
    assert fast.token_losses.dtype == torch.float32
    assert_same(full, fast, full_grads, fast_grads)
    trained = batch["labels"][:, 1:] != -100
    assert (fast.token_losses[~trained] == 0).all() and (fast.token_losses[trained] > 0).all()
    torch.testing.assert_close(fast.loss, fast.token_losses.sum() / trained.sum())


def test_num_items_in_batch_divides_the_sum_as_transformers_does(checkpoints):
    model, processor = vlm(checkpoints)
    batch = padded_batch(processor, model)
    count = (batch["labels"][:, 1:] != -100).sum()
    for items in (torch.tensor(3 * int(count)), 3 * int(count)):  # the Trainer passes a tensor; an int works too
        full, full_grads = loss_and_grads(model, batch, training=False, num_items_in_batch=items)
        fast, fast_grads = loss_and_grads(model, batch, training=True, num_items_in_batch=items)
        assert_same(full, fast, full_grads, fast_grads)
        torch.testing.assert_close(fast.loss, fast.token_losses.sum() / (3 * count))


def test_a_row_without_trained_tokens(checkpoints):
    model, processor = vlm(checkpoints)
    batch = padded_batch(processor, model)
    batch["labels"][1] = -100
    full, full_grads = loss_and_grads(model, batch, training=False)
    fast, fast_grads = loss_and_grads(model, batch, training=True)
    assert_same(full, fast, full_grads, fast_grads)
    assert (fast.token_losses[1] == 0).all()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_packed_rows_give_the_unpacked_per_sample_losses(checkpoints, family):
    model, processor = vlm(checkpoints, family)
    packed, sample_index = packed_batch(processor, model)
    model.train()
    out = model(**packed)
    owner = sample_index[:, 1:]
    for i, sample in enumerate(SAMPLES):
        ids, labels, pixels = encode(processor, model, *sample)
        alone = model(input_ids=ids[None], labels=labels[None], pixel_values=pixels)
        trained = (labels[1:] != -100).sum()
        torch.testing.assert_close(out.token_losses[owner == i].sum() / trained, alone.loss, rtol=1e-5, atol=1e-5)
    # and the same in eval mode, through the LM's own loss over full logits
    model.eval()
    with torch.no_grad():
        full = model(**packed)
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-5, atol=1e-5)


def test_training_path_passes_position_ids_and_makes_no_cache(checkpoints):
    model, processor = vlm(checkpoints)
    packed, _ = packed_batch(processor, model)
    model.train()
    out = model(**packed, use_cache=True)
    assert out.cache is None
    # the position ids are what keeps the samples apart: counting on across samples lets them attend to each other
    one_sequence = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    assert not torch.allclose(model(**one_sequence).token_losses, out.token_losses)


def lm_folder(tmp_path, model_type, **extra):
    config = AutoConfig.for_model(
        model_type, vocab_size=tiny.VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, **extra,
    )
    torch.manual_seed(0)
    path = tmp_path / model_type
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tiny.make_tokenizer(path)
    return path


@pytest.mark.parametrize(
    "model_type, extra",
    [
        ("gemma2", {"final_logit_softcapping": 0.5}),
        ("granite", {"logits_scaling": 3.0}),
        ("cohere", {"logit_scale": 0.25}),
    ],
)
def test_final_logit_transforms_are_applied(checkpoints, tmp_path, model_type, extra):
    model, processor = vlm(checkpoints, llm=lm_folder(tmp_path, model_type, **extra))
    assert model.trains_at_labelled_positions()
    batch = padded_batch(processor, model)
    full, full_grads = loss_and_grads(model, batch, training=False)
    fast, fast_grads = loss_and_grads(model, batch, training=True)
    assert_same(full, fast, full_grads, fast_grads)


def test_an_lm_outside_the_list_takes_the_full_path(checkpoints, tmp_path):
    path = lm_folder(tmp_path, "mixtral", num_local_experts=2, num_experts_per_tok=1, output_router_logits=True)
    model, processor = vlm(checkpoints, llm=path)
    assert not model.trains_at_labelled_positions()
    batch = padded_batch(processor, model)
    model.train()
    out = model(**batch)
    assert out.logits is not None and out.token_losses.requires_grad
    trained = batch["labels"][:, 1:] != -100
    # the LM's own loss, router loss included, is the one returned
    assert not torch.allclose(out.loss, out.token_losses.sum() / trained.sum())


def test_eval_and_generation_keep_full_logits(checkpoints):
    model, processor = vlm(checkpoints)
    batch = padded_batch(processor, model)
    model.train()
    no_labels = model(**{k: v for k, v in batch.items() if k != "labels"})
    assert no_labels.logits.shape[:2] == batch["input_ids"].shape and no_labels.loss is None
    model.eval()
    last = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=1)
    assert last.logits.shape[1] == 1


def test_lora_and_gradient_checkpointing(checkpoints):
    from peft import LoraConfig, get_peft_model

    model, processor = vlm(checkpoints)
    batch = padded_batch(processor, model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0, init_lora_weights=False))
    full, full_grads = loss_and_grads(peft_model, batch, training=False)
    fast, fast_grads = loss_and_grads(peft_model, batch, training=True)
    assert fast.logits is None
    assert any("lora_" in name for name in fast_grads)
    assert_same(full, fast, full_grads, fast_grads)

    peft_model.base_model.model.activation_checkpointing_enable({"use_reentrant": False})
    peft_model.enable_input_require_grads()
    checkpointed, checkpointed_grads = loss_and_grads(peft_model, batch, training=True)
    assert peft_model.base_model.model.language_model.model.gradient_checkpointing
    assert_same(fast, checkpointed, fast_grads, checkpointed_grads)
