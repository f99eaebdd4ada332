"""Qwen-VL's visual weights, with their real names, load into qwen_vl + cross_attn and compute what Qwen-VL does."""

import math

import torch
import torch.nn.functional as F
from tiny import make_llm, make_qwen_vl, qwen_vl_state_dict

from fusevlm import build_vlm
from fusevlm.models.projectors import CrossAttentionProjector, sincos_2d_positions
from fusevlm.models.vision.qwen_vl import QwenVLEncoder, split_qwen_vl_visual_state

WIDTH, LAYERS, HEADS, IMAGE, PATCH, OUT, QUERIES = 32, 2, 2, 32, 8, 64, 4


def visual_state():
    sd = qwen_vl_state_dict(
        width=WIDTH,
        layers=LAYERS,
        image_size=IMAGE,
        patch=PATCH,
        output_dim=OUT,
        n_queries=QUERIES,
        mlp_width=2 * WIDTH,
    )
    prefix = "transformer.visual."
    assert all(k.startswith(prefix) for k in sd)
    return {k[len(prefix) :]: v for k, v in sd.items()}


def build_parts():
    encoder = QwenVLEncoder(
        {
            "config": {
                "image_size": IMAGE,
                "patch_size": PATCH,
                "width": WIDTH,
                "layers": LAYERS,
                "heads": HEADS,
                "mlp_ratio": 2.0,
                "num_positions": (IMAGE // PATCH) ** 2,
            }
        }
    )
    projector = CrossAttentionProjector(
        WIDTH, OUT, encoder.grid, encoder.num_tokens, num_queries=QUERIES, embed_dim=OUT, num_heads=OUT // 32
    )
    return encoder, projector


def test_real_key_names_load_with_nothing_missing_or_unexpected():
    encoder, projector = build_parts()
    trunk, resampler = split_qwen_vl_visual_state(visual_state())
    enc_result = encoder.load_state_dict(trunk, strict=False)
    proj_result = projector.load_state_dict(resampler, strict=False)
    assert enc_result.missing_keys == [] and enc_result.unexpected_keys == []
    assert proj_result.missing_keys == [] and proj_result.unexpected_keys == []
    assert torch.equal(projector.proj, resampler["proj"])
    assert torch.equal(
        encoder.transformer.resblocks[1].attn.in_proj.weight,
        trunk["transformer.resblocks.1.attn.in_proj.weight"],
    )


def reference_qwen_vl(sd, pixels, heads, proj_heads):
    """Qwen-VL's visual forward written out independently: sequence-first, per-head interleaved qkv."""
    x = F.conv2d(pixels, sd["conv1.weight"], stride=PATCH).flatten(2).permute(0, 2, 1)
    x = x + sd["positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), sd["ln_pre.weight"], sd["ln_pre.bias"], eps=1e-6)
    x = x.permute(1, 0, 2)  # L, B, D
    hd = WIDTH // heads
    for i in range(LAYERS):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (WIDTH,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"], eps=1e-6)
        mixed = F.linear(h, sd[b + "attn.in_proj.weight"], sd[b + "attn.in_proj.bias"])
        L, B = mixed.shape[:2]
        mixed = mixed.view(L, B, heads, 3 * hd)
        q, k, v = mixed.split(hd, dim=-1)
        q, k, v = (t.reshape(L, B * heads, hd).transpose(0, 1) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1) @ v
        att = att.transpose(0, 1).reshape(L, B, WIDTH)
        x = x + F.linear(att, sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"])
        h = F.layer_norm(x, (WIDTH,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])),
            sd[b + "mlp.c_proj.weight"],
            sd[b + "mlp.c_proj.bias"],
        )
        x = x + h
    # resampler: key positions are the query-grid table resized (bicubic) to the patch grid (get_abs_pos)
    a = "attn_pool."
    kv = F.linear(x, sd[a + "kv_proj.weight"])
    kv = F.layer_norm(kv, (OUT,), sd[a + "ln_kv.weight"], sd[a + "ln_kv.bias"], eps=1e-6)
    q = F.layer_norm(sd[a + "query"], (OUT,), sd[a + "ln_q.weight"], sd[a + "ln_q.bias"], eps=1e-6)
    pos = sd[a + "pos_embed"]
    side, grid = int(math.sqrt(QUERIES)), IMAGE // PATCH
    key_pos = (
        F.interpolate(
            pos.reshape(1, side, side, -1).permute(0, 3, 1, 2),
            size=(grid, grid),
            mode="bicubic",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .flatten(0, 2)
    )
    n = kv.shape[1]
    out, _ = F.multi_head_attention_forward(
        (q.unsqueeze(1).repeat(1, n, 1) + pos.unsqueeze(1)),
        kv + key_pos.unsqueeze(1),
        kv,
        OUT,
        proj_heads,
        sd[a + "attn.in_proj_weight"],
        sd[a + "attn.in_proj_bias"],
        None,
        None,
        False,
        0.0,
        sd[a + "attn.out_proj.weight"],
        sd[a + "attn.out_proj.bias"],
        training=False,
        need_weights=False,
    )
    out = out.permute(1, 0, 2)
    out = F.layer_norm(out, (OUT,), sd["ln_post.weight"], sd["ln_post.bias"], eps=1e-6)
    return out @ sd["proj"]


def test_same_output_as_an_independent_qwen_vl_forward():
    sd = visual_state()
    encoder, projector = build_parts()
    trunk, resampler = split_qwen_vl_visual_state(sd)
    encoder.load_state_dict(trunk)
    projector.load_state_dict(resampler)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = projector(encoder(pixels))
        reference = reference_qwen_vl(sd, pixels, HEADS, OUT // 32)
    assert ours.shape == (2, QUERIES, OUT)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_sincos_positions_match_the_mae_formula():
    pos = sincos_2d_positions(8, 2)
    # token 3 is (row 1, col 1); first half encodes the column, second the row: sin(1*omega), cos(1*omega)
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expected_axis = torch.cat([torch.sin(omega), torch.cos(omega)]).float()
    torch.testing.assert_close(pos[3], torch.cat([expected_axis, expected_axis]))
    # token 1 is (row 0, col 1)
    torch.testing.assert_close(pos[1, :4], expected_axis)
    torch.testing.assert_close(pos[1, 4:], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_qwen_vl_checkpoint_folder_gives_its_resampler_to_cross_attn(tmp_path):
    vl = make_qwen_vl(
        tmp_path / "qwen-vl", width=WIDTH, image_size=IMAGE, patch=PATCH, output_dim=OUT, n_queries=QUERIES
    )
    llm = make_llm(tmp_path / "llm", "qwen2")  # hidden 64 == output_dim: the whole resampler fits
    model, processor = build_vlm(str(vl), "cross_attn", str(llm))
    sd = visual_state()
    assert model.config.image_seq_length == QUERIES
    assert processor.image_seq_length == QUERIES
    assert torch.equal(model.projector.query.detach(), sd["attn_pool.query"])
    assert torch.equal(model.projector.proj.detach(), sd["proj"])
    assert torch.equal(model.vision_tower.conv1.weight.detach(), sd["conv1.weight"])
    assert model.vision_tower.feature_layer == -1  # Qwen-VL reads the last layer
