"""Paged KV cache and continuous batching: block manager invariants, paged attention, greedy equality."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_bundled
from ridgeline.engine.blocks import AllocStatus, BlockManager, block_hash
from ridgeline.engine.engine import Engine, EngineConfig, SamplingParams
from ridgeline.engine.paged import PagedKVCache, PrefillSegment, StepLayout, paged_attention
from ridgeline.errors import RidgelineError

# -- block manager ------------------------------------------------------------------------------


def test_allocate_maps_positions_to_slots():
    bm = BlockManager(8, block_size=4, watermark=0)
    assert bm.allocate(1, list(range(6))) == 0
    assert bm.table(1) == [0, 1]  # ceil(6 / 4) blocks, handed out in order
    assert bm.allocate(2, list(range(3))) == 0
    assert bm.table(2) == [2]
    assert bm.slot_ids(1, 3, 6) == [3, 4, 5]
    assert bm.slot_ids(2, 0, 3) == [8, 9, 10]
    assert bm.append_slots(1, 9) == []  # 9 slots: a third block
    assert bm.table(1) == [0, 1, 3] and bm.slot_ids(1, 8, 9) == [12]
    assert bm.num_used == 4 and bm.num_free == 4
    bm.free(1)
    assert bm.num_free == 7
    with pytest.raises(RidgelineError, match="freed twice"):
        bm.free(1)
    bm.check()


def test_can_allocate_ok_later_never_with_watermark():
    bm = BlockManager(100, block_size=16, watermark=0.05)  # 5 blocks held back
    assert bm.watermark_blocks == 5
    assert bm.can_allocate(95 * 16) is AllocStatus.OK
    assert bm.can_allocate(95 * 16 + 1) is AllocStatus.NEVER  # 96 blocks leave fewer than 5
    bm.allocate(1, [0] * (50 * 16))
    assert bm.can_allocate(45 * 16) is AllocStatus.OK
    assert bm.can_allocate(46 * 16) is AllocStatus.LATER  # fits the pool, not the free blocks now
    bm.free(1)
    assert bm.can_allocate(46 * 16) is AllocStatus.OK


def test_fork_shares_blocks_and_copies_on_write():
    bm = BlockManager(8, block_size=4, watermark=0)
    bm.allocate(1, list(range(6)))  # blocks 0 (full) and 1 (2 of 4 slots)
    bm.fork(1, 2)
    assert bm.table(2) == [0, 1] and bm.ref[:2] == [2, 2]
    assert bm.append_slots(2, 7) == [(1, 2)]  # the shared, partly filled block is copied to block 2
    assert bm.table(2) == [0, 2] and bm.ref[:3] == [2, 1, 1]
    assert bm.append_slots(1, 7) == []  # the parent now owns block 1 alone: no copy
    bm.fork(1, 3)  # block 1 holds 3 of the parent's 7 tokens: the child's 8th token copies it
    copies = bm.append_slots(3, 8)
    assert copies == [(1, bm.table(3)[1])] and bm.ref[1] == 1
    bm.check()
    for s in (1, 2, 3):
        bm.free(s)
    assert bm.num_free == 8
    bm.check()


def test_copy_on_write_not_needed_when_last_block_is_full():
    bm = BlockManager(8, block_size=4, watermark=0)
    bm.allocate(1, list(range(8)))
    bm.fork(1, 2)
    assert bm.append_slots(2, 9) == []  # writes go to a fresh block; the full ones stay shared
    assert bm.table(2)[:2] == bm.table(1)


def test_prefix_cache_hits_full_blocks_and_evicts_lru():
    bm = BlockManager(6, block_size=4, watermark=0, prefix_caching=True)
    prompt = list(range(10))
    assert bm.allocate(1, prompt) == 0
    bm.commit(1, prompt, 10)  # blocks of tokens 0-3 and 4-7 are full and computed
    h0 = block_hash(None, prompt[:4])
    assert bm.cached[h0] == bm.table(1)[0]
    assert bm.cached[block_hash(h0, prompt[4:8])] == bm.table(1)[1]
    # a second request with the same first 8 tokens reuses both blocks
    assert bm.allocate(2, prompt[:8] + [99, 98, 97]) == 8
    assert bm.table(2)[:2] == bm.table(1)[:2] and bm.ref[bm.table(1)[0]] == 2
    # the block holding the last prompt token is never taken from the cache (its logits are needed)
    assert bm.allocate(3, prompt[:8]) == 4
    for s in (1, 2, 3):
        bm.free(s)
    assert len(bm.evictable) == 2 and bm.num_free == 6
    assert bm.allocate(4, prompt[:5]) == 4  # hit after the owners left
    bm.free(4)
    bm.allocate(5, list(range(100, 124)))  # needs all 6 blocks: both cached blocks are evicted
    assert not bm.cached and not bm.evictable
    bm.check()


def test_different_prefix_misses():
    bm = BlockManager(9, block_size=4, watermark=0, prefix_caching=True)
    bm.allocate(1, list(range(9)))
    bm.commit(1, list(range(9)), 9)
    assert bm.allocate(2, [1, 0, 2, 3] + list(range(4, 9))) == 0  # same tokens, other order
    assert bm.allocate(3, [0, 1, 2, 3, 4, 5, 6, 8, 8]) == 4  # first block same, second differs


@st.composite
def _ops(draw):
    return draw(st.lists(st.tuples(st.sampled_from(["add", "grow", "fork", "free", "preempt", "commit"]),
                                   st.integers(0, 7), st.integers(1, 40)), min_size=1, max_size=60))


@settings(max_examples=150, deadline=None)
@given(ops=_ops(), num_blocks=st.integers(1, 24), block_size=st.sampled_from([1, 2, 4, 16]),
       prefix=st.booleans())
def test_block_manager_invariants(ops, num_blocks, block_size, prefix):
    """Random add/grow/fork/free/preempt sequences: no leak, no double ownership, ref counts consistent."""
    bm = BlockManager(num_blocks, block_size, watermark=0, prefix_caching=prefix)
    live: dict[int, list[int]] = {}  # seq id -> its tokens
    next_id = 0
    for op, pick, n in ops:
        ids = sorted(live)
        target = ids[pick % len(ids)] if ids else None
        if op == "add":
            tokens = [t % 5 for t in range(pick, pick + n)]  # few distinct tokens: prefixes repeat
            if bm.can_allocate(n) is AllocStatus.OK:
                cached = bm.allocate(next_id, tokens)
                assert cached % block_size == 0 and cached < n
                live[next_id] = tokens
                next_id += 1
            else:
                with pytest.raises(RidgelineError):
                    bm.allocate(next_id, tokens)
        elif target is None:
            continue
        elif op == "grow":
            tokens = live[target]
            new = len(tokens) + n % 5
            if bm.can_append(target, new):
                shared_tail = bm.seqs[target].slots % block_size and bm.ref[bm.table(target)[-1]] > 1
                before = list(bm.table(target))
                copies = bm.append_slots(target, new)
                # copy-on-write copies exactly the shared, partly filled tail block, and nothing else
                assert copies == ([(before[-1], bm.table(target)[len(before) - 1])] if shared_tail and new > len(tokens) else [])
                tokens += [(t * 7) % 5 for t in range(new - len(tokens))]
            else:
                free_before = bm.num_free
                assert bm.blocks_for(new) - len(bm.table(target)) + 1 > free_before or free_before == 0
        elif op == "fork":
            bm.fork(target, next_id)
            live[next_id] = list(live[target])
            next_id += 1
        elif op == "commit":
            bm.commit(target, live[target], len(live[target]))
        else:  # free and preempt (recompute) both release every block of the sequence
            bm.free(target)
            del live[target]
        bm.check()
        for s, tokens in live.items():
            assert len(bm.table(s)) == bm.blocks_for(bm.seqs[s].slots)
            assert bm.seqs[s].slots >= len(tokens) or bm.seqs[s].slots == len(tokens)
        assert bm.num_free + bm.num_used == num_blocks
    for s in list(live):
        bm.free(s)
    bm.check()
    assert bm.num_free == num_blocks and all(r == 0 for r in bm.ref)


# -- paged attention ----------------------------------------------------------------------------


class _Module:
    layer_idx = 0


def test_paged_attention_equals_dense_sdpa_on_random_block_tables():
    torch.manual_seed(0)
    H, kvh, d, B, nb = 4, 2, 8, 4, 32
    cache = PagedKVCache(1, kvh, d, nb, B)
    perm = torch.randperm(nb).tolist()
    # sequence A: 5 cached tokens + a chunk of 6; sequence B: 9 cached tokens + 1 decode token
    tables = {"a": perm[:3], "b": perm[3:6]}
    slot = lambda s, p: tables[s][p // B] * B + p % B
    k_all = {s: torch.randn(1, kvh, n, d) for s, n in (("a", 11), ("b", 10))}
    v_all = {s: torch.randn(1, kvh, n, d) for s, n in (("a", 11), ("b", 10))}
    for s, c in (("a", 5), ("b", 9)):
        idx = torch.tensor([slot(s, p) for p in range(c)])
        cache.k[0, idx] = k_all[s][0, :, :c].transpose(0, 1)
        cache.v[0, idx] = v_all[s][0, :, :c].transpose(0, 1)
    q = {"a": torch.randn(1, H, 6, d), "b": torch.randn(1, H, 1, d)}
    key = torch.cat([k_all["a"][:, :, 5:], k_all["b"][:, :, 9:]], 2)
    value = torch.cat([v_all["a"][:, :, 5:], v_all["b"][:, :, 9:]], 2)
    query = torch.cat([q["a"], q["b"]], 2)
    write = torch.tensor([slot("a", p) for p in range(5, 11)] + [slot("b", 9)])
    layout = StepLayout(write, [PrefillSegment(0, 6, 5, torch.tensor([slot("a", p) for p in range(11)]))],
                        torch.tensor([6]), torch.tensor([[slot("b", p) for p in range(10)]]), torch.zeros(1, 1, 1, 10))
    out, _ = paged_attention(_Module(), query, key, value, None, scaling=d ** -0.5, paged_cache=cache,
                             paged_layout=layout)
    # dense reference: each sequence's contiguous keys, causal with the cached offset
    ref_a = F.scaled_dot_product_attention(q["a"], k_all["a"].repeat_interleave(2, 1), v_all["a"].repeat_interleave(2, 1),
                                           attn_mask=torch.ones(6, 11).tril(5).bool())
    ref_b = F.scaled_dot_product_attention(q["b"], k_all["b"].repeat_interleave(2, 1), v_all["b"].repeat_interleave(2, 1))
    assert torch.allclose(out[0, :6], ref_a[0].transpose(0, 1), atol=1e-5)
    assert torch.allclose(out[0, 6:], ref_b[0].transpose(0, 1), atol=1e-5)


# -- engine on a tiny random model ----------------------------------------------------------------

def _tiny(model_type="llama", **kw):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               eos_token_id=0, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _hf_greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=0, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def tiny():
    model = _tiny()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (5, 17, 9, 33, 1, 16)]
    return model, prompts, [_hf_greedy(model, p, 20) for p in prompts]


@pytest.mark.parametrize("cfg", [
    EngineConfig(),
    EngineConfig(block_size=4, max_batched_tokens=8),  # chunked prefill: prompts split over steps
    EngineConfig(block_size=1, max_num_seqs=2),
    EngineConfig(block_size=4, prefix_caching=True),
], ids=["default", "chunked", "block1", "prefix"])
def test_engine_greedy_equals_generate(tiny, cfg):
    model, prompts, refs = tiny
    engine = Engine(model, cfg)
    got = engine.generate(prompts, SamplingParams(max_tokens=20))
    assert [list(c.token_ids) for c in got] == refs
    assert engine.blocks.num_used == 0  # every block came back
    engine.blocks.check()


@pytest.mark.parametrize("prefix", [False, True])
def test_engine_preempts_on_a_tiny_pool_and_stays_exact(tiny, prefix):
    model, prompts, refs = tiny
    engine = Engine(model, EngineConfig(num_blocks=14, block_size=4, prefix_caching=prefix))
    got = engine.generate(prompts, SamplingParams(max_tokens=20))
    assert engine.preemptions > 0
    assert [list(c.token_ids) for c in got] == refs
    assert engine.blocks.num_used == 0


def test_engine_prefix_caching_hits_and_stays_exact():
    model = _tiny()
    g = torch.Generator().manual_seed(2)
    base = torch.randint(1, 300, (24,), generator=g).tolist()
    prompts = [base + torch.randint(1, 300, (k,), generator=g).tolist() for k in (3, 7, 1)]
    refs = [_hf_greedy(model, p, 10) for p in prompts]
    engine = Engine(model, EngineConfig(block_size=4, prefix_caching=True, max_num_seqs=1))
    got = engine.generate(prompts, SamplingParams(max_tokens=10))
    assert [list(c.token_ids) for c in got] == refs
    # request 1 misses; requests 2 and 3 find the 6 full blocks of the shared 24 tokens
    assert engine.blocks.hits == 12


def test_engine_sliding_window_model_equals_generate():
    model = _tiny("mistral", sliding_window=8)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (5, 21)]
    refs = [_hf_greedy(model, p, 16) for p in prompts]
    engine = Engine(model, EngineConfig(block_size=4, max_batched_tokens=6))
    assert [list(c.token_ids) for c in engine.generate(prompts, SamplingParams(max_tokens=16))] == refs


def test_parallel_samples_fork_and_equal_separate_seeded_requests(tiny):
    model, prompts, _ = tiny
    p = SamplingParams(max_tokens=8, temperature=0.9, top_k=50, top_p=0.9, seed=5, n=3, ignore_eos=True)
    engine = Engine(model, EngineConfig(block_size=4))
    forked = engine.generate([prompts[1]], p)[0]
    engine.blocks.check()
    assert engine.blocks.num_used == 0
    separate = [Engine(model, EngineConfig(block_size=4)).generate(
        [prompts[1]], SamplingParams(max_tokens=8, temperature=0.9, top_k=50, top_p=0.9, seed=5 + i,
                                     ignore_eos=True))[0].token_ids for i in range(3)]
    assert list(forked.outputs) == separate
    assert len(set(forked.outputs)) > 1  # samples differ


def test_streaming_and_stop_conditions(tiny):
    model, prompts, refs = tiny
    engine = Engine(model, EngineConfig())
    stop = refs[0][3]
    rid = engine.add_request(prompts[0], SamplingParams(max_tokens=20, stop_token_ids=(stop,)))
    streamed = [o for o in engine.stream()]
    tokens = [o.token_ids[0] for o in streamed]
    assert tokens == refs[0][:refs[0].index(stop) + 1]
    assert streamed[-1].finish_reason == "stop" and all(o.finish_reason is None for o in streamed[:-1])
    assert engine.completion(rid).finish_reasons == ("stop",)


def test_requests_join_while_others_decode(tiny):
    model, prompts, refs = tiny
    engine = Engine(model, EngineConfig())
    engine.add_request(prompts[0], SamplingParams(max_tokens=20), request_id="a")
    for _ in range(5):
        engine.step()
    engine.add_request(prompts[3], SamplingParams(max_tokens=20), request_id="b")
    while engine.has_work():
        engine.step()
    assert list(engine.completion("a").token_ids) == refs[0]
    assert list(engine.completion("b").token_ids) == refs[3]
    assert max(s.running for s in engine.stats) == 2


def test_request_that_can_never_fit_is_rejected_with_a_reason(tiny):
    model, prompts, _ = tiny
    engine = Engine(model, EngineConfig(num_blocks=4, block_size=4))
    with pytest.raises(RidgelineError, match=r"33 \+ max_tokens 20 = 53 tokens can never fit the KV pool of 16"):
        engine.add_request(prompts[3], SamplingParams(max_tokens=20))
    with pytest.raises(RidgelineError, match="exceed the model's"):
        engine.add_request(prompts[3], SamplingParams(max_tokens=10**6))
    assert not engine.has_work()


def test_bad_sampling_params():
    with pytest.raises(RidgelineError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(RidgelineError, match="max_tokens"):
        SamplingParams(max_tokens=0)


# -- the bundled model ------------------------------------------------------------------------------

@needs_bundled
def test_bundled_engine_equals_generate_with_preemption_and_prefix_caching():
    from ridgeline.loader import load_model
    from ridgeline.measure.bench import prompt_ids

    model, tok = load_model("smollm2-135m", "fp32")
    ids = prompt_ids(lambda s: tok(s)["input_ids"], 400)
    prompts = [ids[:40], ids[:40] + ids[200:211], ids[50:53], ids[100:170]]
    refs = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)
        refs.append(out[0, len(p):].tolist())
    for cfg in (EngineConfig(num_blocks=12, block_size=8, max_batched_tokens=32, prefix_caching=True),
                EngineConfig(num_blocks=12, block_size=8, max_batched_tokens=32)):
        engine = Engine(model, cfg)
        got = engine.generate(prompts, SamplingParams(max_tokens=12))
        assert [list(c.token_ids) for c in got] == refs
        assert engine.preemptions > 0
    assert engine.blocks.num_used == 0


# -- traces, replay and serve-bench ------------------------------------------------------------------

def test_trace_lines_parse_and_malformed_lines_are_named(tmp_path):
    from ridgeline.engine.trace import load_trace

    good = ['{"arrival": 0.5, "prompt": "hello", "max_tokens": 4}', "",
            '{"prompt_ids": [1, 2, 3], "max_tokens": 2, "temperature": 0.7, "seed": 3, "id": "x"}',
            '{"arrival": 2, "prompt_len": 40, "max_tokens": 8, "n": 2}']
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(good) + "\n")
    t = load_trace(f)
    assert [r.arrival for r in t] == [0.5, 0.0, 2.0]
    assert t[1].prompt_ids == (1, 2, 3) and t[1].params().temperature == 0.7 and t[1].request_id == "x"
    assert t[2].params().n == 2 and t[2].params().ignore_eos
    for bad, why in [('{"prompt": "hi", "max_tokens": 4', "line 2: not JSON"),
                     ('{"prompt": "hi"}', "line 2: max_tokens is missing"),
                     ('{"prompt": "hi", "prompt_len": 3, "max_tokens": 1}', "line 2: give exactly one of"),
                     ('{"prompt_len": 3, "max_tokens": 0}', "line 2: max_tokens must be an integer >= 1"),
                     ('{"prompt_len": 3, "max_tokens": 2, "arrival": -1}', "line 2: arrival must be"),
                     ('{"prompt_len": 3, "max_tokens": 2, "temprature": 1}', "line 2: unknown field"),
                     ('{"prompt_len": 3, "max_tokens": 2, "top_p": 0}', "line 2: .*top_p"),
                     ('[1, 2]', "line 2: expected a JSON object")]:
        f.write_text(good[0] + "\n" + bad + "\n")
        with pytest.raises(RidgelineError, match=why):
            load_trace(f)


def test_synthetic_trace_is_poisson_with_mixed_lengths():
    from ridgeline.engine.trace import synthetic_trace

    t = synthetic_trace(4000, rate=5.0, prompt_len=(32, 512), output_len=(16, 128), seed=1)
    arr = [r.arrival for r in t]
    assert arr[0] == 0 and all(b >= a for a, b in zip(arr, arr[1:]))
    assert abs((arr[-1] / (len(arr) - 1)) - 0.2) < 0.02  # mean gap 1 / rate
    assert min(r.prompt_len for r in t) >= 32 and max(r.prompt_len for r in t) <= 512
    assert min(r.max_tokens for r in t) >= 16 and max(r.max_tokens for r in t) <= 128
    short = sum(r.prompt_len < 128 for r in t) / len(t)
    assert 0.45 < short < 0.55  # log-uniform: half the prompts below the geometric midpoint 128
    assert t == synthetic_trace(4000, rate=5.0, prompt_len=(32, 512), output_len=(16, 128), seed=1)
    with pytest.raises(RidgelineError, match="rate"):
        synthetic_trace(3, rate=0)


def test_replay_counts_waste_and_latency_by_hand(tiny):
    from ridgeline.engine.serve import replay, summarize
    from ridgeline.engine.trace import TraceRequest

    model, prompts, _ = tiny
    engine = Engine(model, EngineConfig(block_size=4))
    result = replay(engine, [TraceRequest(0.0, 3, prompt_ids=tuple(prompts[0]))], [prompts[0]], realtime=False)
    s = summarize(result)
    # prompt 5 tokens, 3 generated: step 1 holds 5 of 8 slots, step 2 6 of 8, step 3 finishes and frees
    assert [(x.blocks_used, x.slots_used) for x in result.steps] == [(2, 5), (2, 6), (0, 0)]
    assert s["kv_waste"] == pytest.approx(5 / 16)
    assert s["output_tokens"] == 3 and s["requests"] == 1
    r = result.requests[0]
    assert len(r["itl_s"]) == 2 and r["ttft_s"] > 0 and r["e2e_s"] >= r["ttft_s"]
    assert s["kv_in_use_bytes"]["peak"] == 8 * result.kv_bytes_per_slot
    assert result.kv_bytes_per_slot == 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads, head_dim 16, fp32


def _cli(*args):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_serve_bench_cli_writes_a_record(tiny_model_dir, tmp_path):
    import json

    out = tmp_path / "serve.json"
    r = _cli("serve-bench", tiny_model_dir, "--synthetic", 5, "--rate", "inf", "--prompt-len", "8:40",
             "--output-len", "4:12", "--block-size", 8, "--device", "raspberry-pi-5", "--plot", tmp_path / "roof",
             "--out", out)
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert rec["kind"] == "ridgeline.serve.results" and rec["summary"]["requests"] == 5
    assert rec["summary"]["output_tokens"] == sum(x["output_tokens"] for x in rec["requests"])
    assert rec["engine"]["block_size"] == 8 and rec["trace"]["synthetic"] == 5
    assert all(p["flops"] > 0 and p["phi"] > 0 for p in rec["decode_roofline"])
    assert (tmp_path / "roof.png").exists()
    assert "KV waste" in r.output and "TTFT" in r.output


def test_serve_bench_cli_bad_input(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_len": 8, "max_tokens": 4}\n{"prompt_len": 8}\n')
    r = _cli("serve-bench", tiny_model_dir, "--requests", bad)
    assert r.exit_code == 2 and "line 2: max_tokens is missing" in r.output
    big = tmp_path / "big.jsonl"
    big.write_text('{"prompt_len": 100, "max_tokens": 50, "id": "long"}\n')
    r = _cli("serve-bench", tiny_model_dir, "--requests", big, "--num-blocks", 4, "--block-size", 16)
    assert r.exit_code == 2 and "long: prompt 100 + max_tokens 50 = 150 tokens can never fit the KV pool" in r.output
    r = _cli("serve-bench", tiny_model_dir)
    assert r.exit_code == 2 and "exactly one of --requests FILE or --synthetic N" in r.output
