"""Per-operator FLOPs and bytes of tiny configs, against counts done by hand in the comments."""

import numpy as np
import pytest

from ridgeline.roofline.workload import Options, build_workload
from ridgeline.specs.model import spec_from_config
from ridgeline.specs.scenario import Precision, Scenario

# h 8, 2 query heads / 1 KV head of dim 4, SwiGLU f 12, vocab 10, one layer, untied, no biases
TINY = {"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 4, "intermediate_size": 12, "vocab_size": 10, "num_hidden_layers": 1,
        "tie_word_embeddings": False}
BF16 = Precision("bf16", "bf16", "bf16")


def _ops(phase):
    return {op.name: op for op in phase.ops}


def test_prefill_flops_by_hand():
    w = build_workload(spec_from_config(TINY), Scenario(3, 2), BF16)
    ops = _ops(w.prefill)
    expected = {
        "attn_norm": 7 * 3 * 8,  # 7 ops per element, 3 tokens × h
        "q_proj": 2 * 3 * 8 * 8,  # 2 × tokens × h × (n_q·d)
        "k_proj": 2 * 3 * 8 * 4,
        "v_proj": 2 * 3 * 8 * 4,
        "rope": 3 * 3 * (2 + 1) * 4,  # 3 ops × tokens × (n_q + n_kv) heads × rotary dims
        "qk": 2 * 2 * 4 * 6,  # causal: 1 + 2 + 3 = 6 query-key pairs per head; 2 × n_q × d × pairs
        "softmax": 5 * 2 * 6,  # 5 ops × n_q × pairs
        "av": 2 * 2 * 4 * 6,
        "o_proj": 2 * 3 * 8 * 8,
        "attn_residual": 3 * 8,
        "ffn_norm": 7 * 3 * 8,
        "gate_proj": 2 * 3 * 8 * 12,
        "up_proj": 2 * 3 * 8 * 12,
        "act_mul": 4 * 3 * 12,  # SiLU·mul on f
        "down_proj": 2 * 3 * 12 * 8,
        "ffn_residual": 3 * 8,
        "embedding": 0,  # a lookup
        "final_norm": 7 * 3 * 8,
        "lm_head": 2 * 1 * 8 * 10,  # last position only
    }
    assert {k: op.total_flops(w.prefill.steps) for k, op in ops.items()} == expected
    assert w.prefill.flops == sum(expected.values())


def test_decode_integrates_over_growing_context():
    w = build_workload(spec_from_config(TINY), Scenario(3, 2), BF16)
    d = w.decode
    assert d.steps == 2 and list(d.contexts) == [3, 4]
    ops = _ops(d)
    # step 1 sees 3 cached + itself = 4 keys, step 2 sees 5: 9 pairs per head
    assert ops["qk"].total_flops(2) == 2 * 2 * 4 * 9
    assert list(ops["qk"].flops) == [2 * 2 * 4 * 4, 2 * 2 * 4 * 5]
    assert ops["q_proj"].total_flops(2) == 2 * (2 * 8 * 8)
    b = {k: op.total_bytes(2) for k, op in ops.items()}
    # K read: (c + 1) tokens × 1 KV head × 4 dims × 2 bytes = 32 then 40; V the same
    assert b["qk"]["kv_read"] == 72 and b["av"]["kv_read"] == 72
    assert b["k_proj"]["kv_write"] == 2 * 4 * 2 and b["v_proj"]["kv_write"] == 16
    assert b["q_proj"]["weights"] == 2 * 64 * 2  # weights streamed every step
    assert b["embedding"]["weights"] == 2 * 8 * 2  # one row per step
    assert b["lm_head"]["weights"] == 2 * 80 * 2
    # the per-step attention cost grows; the sum over steps equals the totals
    assert d.step_flops()[1] > d.step_flops()[0]
    assert np.isclose(d.step_flops().sum(), d.flops)


def test_prefill_bytes_by_hand():
    w = build_workload(spec_from_config(TINY), Scenario(3, 0), BF16, Options(activation_traffic="fused"))
    by = w.prefill.bytes_by_kind()
    params = 10 * 8 + 8 + 64 + 32 + 32 + 64 + 8 + 96 * 3 + 8 + 80  # embd, norms, q k v o, norm, mlp, final, head
    assert w.weights_bytes == params * 2
    # weights: every matrix once, the embedding only for the 3 rows looked up (not the whole table)
    assert by["weights"] == (params - 80) * 2 + 3 * 8 * 2
    assert by["activations"] == 0
    assert by["kv_write"] == 2 * 3 * 4 * 2 and by["kv_read"] == 2 * 3 * 4 * 2
    assert w.decode.steps == 0


def test_batch_shares_weights_not_kv():
    spec = spec_from_config(TINY)
    one = build_workload(spec, Scenario(3, 2, 1), BF16)
    four = build_workload(spec, Scenario(3, 2, 4), BF16)
    b1, b4 = one.decode.bytes_by_kind(), four.decode.bytes_by_kind()
    assert b4["kv_read"] == 4 * b1["kv_read"] and b4["kv_write"] == 4 * b1["kv_write"]
    w1 = b1["weights"] - _ops(one.decode)["embedding"].total_bytes(2)["weights"]
    w4 = b4["weights"] - _ops(four.decode)["embedding"].total_bytes(2)["weights"]
    assert w1 == w4
    assert four.decode.flops == pytest.approx(4 * one.decode.flops)
    assert four.kv_bytes == 4 * one.kv_bytes


def test_sliding_window_caps_keys():
    spec = spec_from_config({**TINY, "model_type": "mistral", "sliding_window": 4})
    w = build_workload(spec, Scenario(6, 3), BF16)
    qk = _ops(w.prefill)["qk"]
    # prefill of 6 with W = 4: pairs 1 + 2 + 3 + 4 + 4 + 4 = 18
    assert qk.total_flops(1) == 2 * 2 * 4 * 18
    # decode: every step sees the window of 4 keys
    assert list(_ops(w.decode)["qk"].flops) == [2 * 2 * 4 * 4] * 3
    # the cache holds W - 1 = 3 tokens
    assert w.kv_bytes == 3 * 2 * 4 * 2


def test_non_causal_switch_counts_the_full_square():
    w = build_workload(spec_from_config(TINY), Scenario(3, 0), BF16, Options(causal=False))
    assert _ops(w.prefill)["qk"].total_flops(1) == 2 * 2 * 4 * 9


def test_moe_decode_streams_only_active_experts():
    cfg = {**TINY, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}
    w = build_workload(spec_from_config(cfg), Scenario(3, 1), BF16)
    ops = _ops(w.decode)
    # one token: exactly top-2 of 4 experts' weights are read; each is 12 × 8 × 2 bytes
    assert ops["experts_gate"].total_bytes(1)["weights"] == pytest.approx(2 * 96 * 2)
    assert ops["experts_gate"].total_flops(1) == 2 * 2 * 8 * 12
    assert ops["router"].total_flops(1) == 2 * 8 * 4


def test_mla_absorbed_and_naive_decode_flops():
    cfg = {"model_type": "deepseek_v3", "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 2,
           "num_hidden_layers": 1, "intermediate_size": 12, "vocab_size": 10, "q_lora_rank": None,
           "kv_lora_rank": 16, "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 4}
    spec = spec_from_config(cfg)
    absorbed = _ops(build_workload(spec, Scenario(3, 1), BF16).decode)
    # 4 keys (3 cached + 1); absorbed scores over d_c + d_r = 18 dims, values over d_c = 16
    assert absorbed["qk"].total_flops(1) == 2 * 2 * 18 * 4
    assert absorbed["av"].total_flops(1) == 2 * 2 * 16 * 4
    assert absorbed["q_absorb"].total_flops(1) == 2 * 2 * 4 * 16  # n_q × d_n × d_c
    assert absorbed["o_absorb"].total_flops(1) == 2 * 2 * 16 * 4  # n_q × d_c × d_v
    # latent cache read: 4 tokens × 18 elements × 2 bytes
    assert absorbed["qk"].total_bytes(1)["kv_read"] == 4 * 18 * 2
    naive = _ops(build_workload(spec, Scenario(3, 1), BF16, Options(mla_decode="naive")).decode)
    assert naive["qk"].total_flops(1) == 2 * 2 * 6 * 4  # d_n + d_r = 6 per head
    # the latent is decompressed for every key attended: 4 tokens × d_c × n_q (d_n + d_v)
    assert naive["kv_b_proj"].total_flops(1) == 2 * 4 * 16 * 2 * 8
