"""Medusa and speculative decoding: trees, tree verification and KV compaction, acceptance rules, heads, training,
the bench and Workload integration, bad input. Oracles: hand-built masks and distributions, plain forwards over
each node's ancestor path, recomputation from scratch, and plain greedy decoding (itself equal to transformers)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ridgeline.engine import (Acceptance, DraftModelDrafter, HFVerifier, MedusaDrafter, PromptLookupDrafter,  # noqa: E402
                              SpecDecoder, Tree, choose_tree, expected_tokens, first_layers, greedy_path, grow_tree,
                              parse_tree, typical_path, typical_probs)
import ridgeline.kernels as K  # noqa: E402
from ridgeline.errors import RidgelineError  # noqa: E402
from ridgeline.measure import LeanCausalLM  # noqa: E402
from ridgeline.measure.lean import greedy  # noqa: E402
from ridgeline.train import (MedusaConfig, MedusaHeads, base_info, load_heads, rank_accuracy, save_heads,  # noqa: E402
                             weights_hash)

VOCAB, HIDDEN = 320, 64


def tiny_llama(seed: int = 0, tied: bool = False, dtype=torch.float32):
    """A tiny random llama (3 layers, GQA 4/2)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                                   tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg).eval().to(dtype).requires_grad_(False)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def prompt(n: int = 9, seed: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


#: a sparse tree: two candidates at depth 1, three at depth 2, one at depth 3
PATHS = ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))


# ---------------------------------------------------------------------------------------------
# the tree: structure, mask and positions by hand


def test_tree_mask_and_positions_by_hand():
    tree = Tree(tuple(reversed(PATHS)))  # any order in, sorted by (depth, path)
    assert tree.paths == PATHS and tree.size == 7 and tree.depth == 3
    assert tree.depths() == [0, 1, 1, 2, 2, 2, 3]
    assert tree.parents() == [-1, 0, 0, 1, 1, 2, 3]
    assert tree.children() == [[1, 2], [3, 4], [5], [6], [], [], []]
    assert tree.ranks_needed() == [2, 2, 1]
    assert tree.positions(10).tolist() == [10, 11, 11, 12, 12, 12, 13]
    expected = [[1, 0, 0, 0, 0, 0, 0],   # root
                [1, 1, 0, 0, 0, 0, 0],   # (0,)
                [1, 0, 1, 0, 0, 0, 0],   # (1,)
                [1, 1, 0, 1, 0, 0, 0],   # (0,0)
                [1, 1, 0, 0, 1, 0, 0],   # (0,1)
                [1, 0, 1, 0, 0, 1, 0],   # (1,0)
                [1, 1, 0, 1, 0, 0, 1]]   # (0,0,0)
    assert tree.visibility().int().tolist() == expected
    chain = Tree.chain(3)
    assert chain.paths == ((0,), (0, 0), (0, 0, 0)) and chain.visibility().int().tolist() == torch.tril(
        torch.ones(4, 4, dtype=torch.int)).tolist()


def test_tree_specs_parse_and_malformed_ones_are_named(tmp_path):
    assert parse_tree("0;1;0,0;0,1;1,0;0,0,0").paths == PATHS
    assert parse_tree("[[0], [1], [0, 0]]").paths == PATHS[:3]
    f = tmp_path / "tree.json"
    f.write_text(json.dumps({"tree": [[0], [0, 0]]}))
    assert parse_tree(str(f)).paths == ((0,), (0, 0))
    for spec, needle in [("0;0,0,0", "has no parent [0, 0]"), ("0;x", "'x' is not comma-separated ranks"),
                         ("[[0], [0, -1]]", "ranks >= 0"), ("[[0], 'a']", "list of paths"), ("", "empty"),
                         ("[[0],", "not valid JSON"), ("0;0", "appears twice"), ("nope.json", "nor an existing file")]:
        with pytest.raises(RidgelineError, match=None) as exc:
            parse_tree(spec)
        assert needle in str(exc.value), (spec, str(exc.value))


def test_sparse_tree_growth_and_size_choice_by_hand():
    acc = [[0.6, 0.2], [0.5, 0.1]]  # chances: (0,) .6, (1,) .2, (0,0) .3, (0,1) .06, (1,0) .1
    assert grow_tree(acc, 3).paths == ((0,), (1,), (0, 0))
    assert expected_tokens(grow_tree(acc, 3), acc) == pytest.approx(1 + 0.6 + 0.3 + 0.2)
    assert grow_tree(acc, 5).paths == ((0,), (1,), (0, 0), (0, 1), (1, 0))
    # verify cost relative to one decode step: 1 token 1.0, 2 tokens 1.1, 3 tokens 1.5, 4 tokens 2.5
    choice = choose_tree(acc, {1: 1.0, 2: 1.1, 3: 1.5, 4: 2.5})
    speedups = [round(r["expected_speedup"], 4) for r in choice.table]
    assert speedups == [1.0, round(1.6 / 1.1, 4), round(1.9 / 1.5, 4), round(2.1 / 2.5, 4)]
    assert choice.tree.paths == ((0,),)
    # cheap verification of 3 tokens makes the 2-node tree best; a costly drafter shifts nothing below it
    assert choose_tree(acc, {1: 1.0, 2: 1.3, 3: 1.35}).tree.paths == ((0,), (0, 0))
    assert choose_tree(acc, {1: 1.0, 2: 1.3, 3: 1.35}, draft_cost=5.0).tree.paths == ()


# ---------------------------------------------------------------------------------------------
# verification: tree logits, KV compaction


NATIVE = pytest.param("native", marks=pytest.mark.skipif(not K.available(), reason=f"native kernels: {K.info().reason}"))
PATHS_RUN = ["lean", "hf", NATIVE]


def _verifier(model, path, max_len=64):
    if path == "native":
        return K.NativeCausalLM.from_hf(model, max_len)
    return LeanCausalLM.from_hf(model, max_len) if path == "lean" else HFVerifier(model, max_len)


@pytest.mark.parametrize("path", PATHS_RUN)
def test_tree_logits_equal_a_plain_forward_over_each_ancestor_path(model, path):
    v = _verifier(model, path)
    ids, tree = prompt(), Tree(PATHS)
    tokens = [7, 11, 12, 13, 14, 15, 16]
    v.reset()
    v.prefill(torch.tensor([ids]))
    logits, hidden = v.verify(torch.tensor(tokens), tree.positions(len(ids)), tree.visibility())
    assert logits.shape == (7, VOCAB) and hidden.shape == (7, HIDDEN) and v.length == len(ids) + 7
    parents = tree.parents()
    with torch.inference_mode():
        for i in range(7):
            chain, j = [], i
            while j >= 0:
                chain.append(tokens[j])
                j = parents[j]
            full = torch.tensor([ids + chain[::-1]])
            ref = model(full).logits[0, -1]
            torch.testing.assert_close(logits[i], ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(model.lm_head(hidden[i]), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS_RUN)
def test_kv_compaction_equals_recomputing_from_scratch(model, path):
    v = _verifier(model, path)
    ids, tree = prompt(), Tree(PATHS)
    tokens = [7, 11, 12, 13, 14, 15, 16]
    v.reset()
    v.prefill(torch.tensor([ids]))
    v.verify(torch.tensor(tokens), tree.positions(len(ids)), tree.visibility())
    v.keep(torch.tensor([0, 2, 5]))  # root, (1,), (1,0): a branch that is not the first
    assert v.length == len(ids) + 3
    kept = [tokens[i] for i in (0, 2, 5)]
    got = v.decode(torch.tensor([[42]]))
    ref_v = _verifier(model, path)
    ref_v.reset()
    ref_v.prefill(torch.tensor([ids + kept]))
    torch.testing.assert_close(got, ref_v.decode(torch.tensor([[42]])), atol=1e-5, rtol=0)
    if path == "lean":  # the cache itself: every kept slot as recomputation wrote it
        n = len(ids) + 4
        torch.testing.assert_close(v.kv[..., :n, :], ref_v.kv[..., :n, :], atol=1e-5, rtol=0)


def test_verify_and_keep_refuse_bad_arguments(model):
    v = LeanCausalLM.from_hf(model, 16)
    v.prefill(torch.tensor([prompt(4)]))
    with pytest.raises(RidgelineError, match="keep follows verify"):
        v.keep(torch.tensor([0]))
    eye = torch.eye(3, dtype=torch.bool)
    with pytest.raises(RidgelineError, match="visibility"):
        v.verify(torch.tensor([1, 2, 3]), torch.arange(4, 7), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(RidgelineError, match="positions"):
        v.verify(torch.tensor([1, 2, 3]), torch.arange(4, 6), eye)
    with pytest.raises(RidgelineError, match="max_len"):
        v.verify(torch.arange(13), torch.arange(13), torch.eye(13, dtype=torch.bool))  # 4 + 13 > 16 slots
    v.verify(torch.tensor([1, 2, 3]), torch.arange(4, 7), eye)
    with pytest.raises(RidgelineError, match="increasing"):
        v.keep(torch.tensor([2, 0]))
    with pytest.raises(RidgelineError, match=r"\[0, 3\)"):
        v.keep(torch.tensor([3]))


# ---------------------------------------------------------------------------------------------
# decoding loops: greedy equality


class OracleDrafter:
    """Knows the reference continuation; puts the right token at a varying rank of a sparse tree (so accepted
    paths take other branches than the first) and wrong tokens elsewhere."""

    name = "oracle"

    def __init__(self, reference: list[int], prompt_len: int) -> None:
        self.ref, self.p, self.tree, self.calls = reference, prompt_len, Tree(PATHS), 0

    def start(self, prompt):
        self.calls = 0

    def observe(self, hidden):
        pass

    def propose(self, context):
        self.calls += 1
        pos = len(context) - self.p  # reference index of the token after the root
        right = self.ref[pos:pos + 3] + [0, 0, 0]
        good = self.calls % 3  # which rank holds the right token at depth 1: 0, 1, or none (2)
        drafts = []
        for path in self.tree.paths:
            d, on_track = len(path), path[0] == good and all(r == 0 for r in path[1:])
            drafts.append(right[d - 1] if on_track else (right[d - 1] + 1 + path[-1]) % VOCAB)
        return self.tree, drafts


@pytest.mark.parametrize("path", PATHS_RUN)
def test_greedy_equality_with_every_drafter(model, path):
    ids = prompt()
    ref = greedy(LeanCausalLM.from_hf(model, 128), torch.tensor([ids]), 40)
    heads = MedusaHeads(HIDDEN, VOCAB, 3).attach(model.lm_head.weight)
    with torch.no_grad():
        for block in heads.blocks:
            block[0].linear.weight.normal_(0, 0.3)
    drafters = [OracleDrafter(ref, len(ids)), MedusaDrafter(heads, Tree(PATHS)), PromptLookupDrafter(),
                DraftModelDrafter(_verifier(first_layers(model, 1), path, 128), 4)]
    for drafter in drafters:
        verifier = _verifier(model, path, 128)
        dec = SpecDecoder(verifier, drafter)
        assert dec.generate(ids, 40) == ref, drafter.name
        assert sum(s.tokens for s in dec.steps) == 39  # every token after the first came from a step


def test_oracle_drafts_are_accepted_several_at_a_time(model):
    ids = prompt()
    ref = greedy(LeanCausalLM.from_hf(model, 128), torch.tensor([ids]), 40)
    dec = SpecDecoder(LeanCausalLM.from_hf(model, 128), OracleDrafter(ref, len(ids)))
    assert dec.generate(ids, 40) == ref
    # step 1: the right tokens on branch (1,) -> (1,0): 2 drafts + bonus; step 2: none right: the bonus only;
    # step 3: on branch (0,) -> (0,0) -> (0,0,0): 3 drafts + bonus
    assert [s.tokens for s in dec.steps[:6]] == [3, 1, 4, 3, 1, 4]
    assert all(s.verified == 7 for s in dec.steps)


def test_step_limit_caps_the_tokens_cached(model):
    ids = prompt()
    ref = greedy(LeanCausalLM.from_hf(model, 128), torch.tensor([ids]), 20)
    dec = SpecDecoder(LeanCausalLM.from_hf(model, 128), OracleDrafter(ref, len(ids)))
    first = dec.prefill(ids)
    new = dec.step(2)
    assert [first] + new == ref[:3] and dec.cached() == len(ids) + 2


def test_greedy_path_by_hand():
    tree = Tree(PATHS)
    tokens = [5, 1, 2, 3, 4, 6, 7]
    logits = torch.full((7, 10), -1.0)
    for node, nxt in {0: 2, 2: 6, 5: 9, 1: 3, 3: 7}.items():  # argmax at each node
        logits[node, nxt] = 1.0
    assert greedy_path(tree, tokens, logits) == ([0, 2, 5], 9)  # root -> (1,) -> (1,0), bonus 9
    logits[0] = -1.0
    logits[0, 1] = 1.0
    assert greedy_path(tree, tokens, logits) == ([0, 1, 3, 6], int(logits[6].argmax()))


# ---------------------------------------------------------------------------------------------
# typical acceptance on hand-made distributions


def _logits(rows, T=0.7):
    """Logits whose softmax at temperature T is exactly `rows` (each a distribution)."""
    return T * torch.log(torch.tensor(rows, dtype=torch.float64))


def test_typical_threshold_by_hand():
    acc = Acceptance("typical", 0.7, 0.09, 0.3)
    p, thr = typical_probs(_logits([[0.25] * 4, [0.97, 0.01, 0.01, 0.01]]), acc)
    # uniform: H = ln 4, alpha * exp(-H) = 0.3 / 4 = 0.075 < eps; peaked: H = 0.1677, 0.3 * 0.8456 > eps = 0.09
    h = -(0.97 * math.log(0.97) + 3 * 0.01 * math.log(0.01))
    assert thr.tolist() == pytest.approx([0.075, min(0.09, 0.3 * math.exp(-h))], abs=1e-6)
    assert p[1].tolist() == pytest.approx([0.97, 0.01, 0.01, 0.01], abs=1e-6)


def test_typical_path_takes_the_deepest_accepted_and_breaks_ties_by_likelihood():
    acc = Acceptance("typical")
    tree = Tree(((0,), (1,), (0, 0), (1, 0)))  # nodes: 0 root, 1 (0,), 2 (1,), 3 (0,0), 4 (1,0)
    peaked, flat = [0.97, 0.01, 0.01, 0.01], [0.25] * 4
    # at the root (peaked, threshold 0.09): token 1 (p .01) fails, token 0 (p .97) passes
    tokens = [3, 1, 0, 2, 1]
    rows = [peaked, flat, flat, flat, [0.1, 0.2, 0.3, 0.4]]
    path, bonus = typical_path(tree, tokens, _logits(rows), acc, torch.Generator().manual_seed(0))
    assert path == [0, 2, 4]  # (1,) carries token 0: accepted; its child (1,0) token 1 under flat: 0.25 > 0.075
    assert bonus in (0, 1, 2, 3)  # sampled at node 4: p=[.1,.2,.3,.4], every token above its threshold
    # both depth-1 nodes accepted, both children accepted: the tie is broken by the sum of log p
    rows = [[0.5, 0.5, 0.0001, 0.0001], [0.97, 0.01, 0.01, 0.01], [0.01, 0.97, 0.01, 0.01], flat, flat]
    rows = [[x / sum(r) for x in r] for r in rows]
    tokens = [3, 0, 1, 0, 1]  # (0,)=0 p .5, (1,)=1 p .5 at the root; (0,0)=0 p .97 under node 1, (1,0)=1 p .97
    path, _ = typical_path(tree, tokens, _logits(rows), acc)
    assert path in ([0, 1, 3], [0, 2, 4]) and len(path) == 3
    rows[2] = [0.3, 0.4, 0.2, 0.1]  # node 2's child now has p .4: the other branch is more likely
    path, _ = typical_path(tree, tokens, _logits(rows), acc)
    assert path == [0, 1, 3]


def test_typical_sampling_never_draws_below_the_threshold():
    from ridgeline.engine import sample_typical

    acc = Acceptance("typical")
    p, thr = typical_probs(_logits([[0.5, 0.3, 0.15, 0.04, 0.01]]), acc)
    gen = torch.Generator().manual_seed(0)
    drawn = {sample_typical(p[0], thr[0], gen) for _ in range(300)}
    allowed = {i for i, x in enumerate(p[0].tolist()) if x >= float(thr[0])}
    assert drawn == allowed == {0, 1, 2}


def test_typical_decoding_is_reproducible_and_labelled_not_lossless(model):
    ids = prompt()
    heads = MedusaHeads(HIDDEN, VOCAB, 3).attach(model.lm_head.weight)
    acc = Acceptance("typical", seed=3)
    runs = [SpecDecoder(LeanCausalLM.from_hf(model, 128), MedusaDrafter(heads, Tree(PATHS)), acc).generate(ids, 24)
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 24
    assert not acc.lossless and Acceptance().lossless and "typical T=0.7" in acc.label
    for bad in [dict(kind="nucleus"), dict(kind="typical", temperature=0), dict(kind="typical", eps=float("nan"))]:
        with pytest.raises(RidgelineError):
            Acceptance(**bad)


# ---------------------------------------------------------------------------------------------
# heads: structure, fresh heads, save / load


@pytest.mark.parametrize("tied", [True, False])
def test_fresh_heads_equal_the_base_shifted_prediction(model, tied):
    heads = MedusaHeads(HIDDEN, VOCAB, 4, layers=2, tied=tied).attach(model.lm_head.weight, init_untied=True)
    h = torch.randn(5, HIDDEN)
    out = heads(h)
    assert out.shape == (5, 4, VOCAB)
    base = model.lm_head(h)
    for k in range(4):
        assert torch.equal(out[:, k], base)  # ResBlock(h) = h + SiLU(0) = h exactly
    assert heads.topk(h[0], 3).tolist() == [base[0].topk(3).indices.tolist()] * 4


def test_heads_are_separate_modules_with_the_expected_parameters():
    heads = MedusaHeads(HIDDEN, VOCAB, 3, layers=2, tied=True)
    blocks = [b for head in heads.blocks for b in head]
    assert len({id(b) for b in blocks}) == 6 and len({b.linear.weight.data_ptr() for b in blocks}) == 6
    assert sum(p.numel() for p in heads.parameters()) == 3 * 2 * (HIDDEN * HIDDEN + HIDDEN)
    with torch.no_grad():
        heads.blocks[0][0].linear.weight.fill_(1.0)
    assert heads.blocks[1][0].linear.weight.abs().sum() == 0  # not `[block] * n`
    untied = MedusaHeads(HIDDEN, VOCAB, 3, tied=False)
    assert sum(p.numel() for p in untied.parameters()) == 3 * (HIDDEN * HIDDEN + HIDDEN + VOCAB * HIDDEN)


def test_rank_accuracy_by_hand(model):
    heads = MedusaHeads(HIDDEN, VOCAB, 2).attach(model.lm_head.weight)
    h = torch.randn(4, HIDDEN)
    top = model.lm_head(h).topk(3).indices  # fresh heads rank as the base does
    labels = torch.stack([top[:, 0], top[:, 1]], 1).clone()
    labels[3, 1] = -100  # unknown: not counted
    labels[2, 0] = top[2, 2]
    acc = rank_accuracy(heads, h, labels, ranks=3)
    assert acc.tolist() == [[0.75, 0.0, 0.25], [0.0, 1.0, 0.0]]


def test_draft_vocabulary_by_hand(model, tmp_path):
    from ridgeline.engine import coverage, frequent_tokens

    labels = torch.tensor([[5, 7], [5, -100], [9, 5], [7, 3]])
    assert frequent_tokens(labels, VOCAB, 2).tolist() == [5, 7]  # 5 three times, 7 twice; ascending ids
    assert frequent_tokens(labels, VOCAB, 10).tolist() == [3, 5, 7, 9]  # only tokens that occur
    assert coverage(torch.tensor([5, 7]), labels) == pytest.approx(5 / 7)
    heads = MedusaHeads(HIDDEN, VOCAB, 2).attach(model.lm_head.weight)
    vocab = torch.tensor([3, 10, 42, 77, 100])
    h = torch.randn(HIDDEN)
    full = model.lm_head(h)
    heads.restrict(vocab)
    want = vocab[full[vocab].topk(2).indices]  # the best two of the five, as token ids
    assert heads.topk(h, 2).tolist() == [want.tolist()] * 2
    out = save_heads(heads, tmp_path / "h", base_info(model))
    loaded, manifest = load_heads(out, model)
    assert torch.equal(loaded.draft_vocab, vocab) and manifest["draft_vocab"] == 5
    assert loaded.topk(h, 2).tolist() == [want.tolist()] * 2
    # training targets become draft-vocabulary indices; outside it (and unknown) they are masked
    assert loaded.draft_index(torch.tensor([10, 5, -100, 42])).tolist() == [1, -100, -100, 2]


@pytest.mark.skipif(not K.available(), reason=f"native kernels: {K.info().reason}")
def test_packed_draft_projection_ranks_as_torch_does(model):
    heads = MedusaHeads(HIDDEN, VOCAB, 3).attach(model.lm_head.weight)
    with torch.no_grad():
        for block in heads.blocks:
            block[0].linear.weight.normal_(0, 0.3)
    hs = torch.randn(8, HIDDEN)
    for vocab in (None, torch.arange(0, VOCAB, 3)):
        heads.restrict(vocab)
        want = [heads.topk(h, 4) for h in hs]
        heads.pack_projection("f32")
        assert heads.packed_format == "f32"
        assert all(torch.equal(heads.topk(h, 4), w) for h, w in zip(hs, want))
    heads.restrict(None)  # restricting drops the packed copy (it held the old rows)
    assert heads.packed_format is None
    with pytest.raises(RidgelineError, match="tied"):
        MedusaHeads(HIDDEN, VOCAB, 2, tied=False).pack_projection()


def test_heads_round_trip_and_refuse_another_base(model, tmp_path):
    heads = MedusaHeads(HIDDEN, VOCAB, 2).attach(model.lm_head.weight)
    with torch.no_grad():
        heads.blocks[1][0].linear.weight.normal_()
    out = save_heads(heads, tmp_path / "heads", base_info(model), {"accuracy": {"rank": [[0.5], [0.2]]}})
    loaded, manifest = load_heads(out, model)
    h = torch.randn(3, HIDDEN)
    assert torch.equal(loaded(h), heads(h)) and manifest["accuracy"]["rank"] == [[0.5], [0.2]]
    assert loaded.lm_head.data_ptr() == model.lm_head.weight.data_ptr() and "lm_head" not in loaded.state_dict()
    # the same weights in bf16 hash alike; other weights, hidden sizes or vocabularies are refused
    assert weights_hash(tiny_llama(dtype=torch.bfloat16)) == weights_hash(model)
    other = tiny_llama(seed=1)
    with pytest.raises(RidgelineError, match="weights differ"):
        load_heads(out, other)
    wider = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=VOCAB)).eval()
    with pytest.raises(RidgelineError, match="hidden size 64; this model's is 32"):
        load_heads(out, wider)
    bigger = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=400)).eval()
    with pytest.raises(RidgelineError, match="vocabulary of 320; this model's has 400"):
        load_heads(out, bigger)
    with pytest.raises(RidgelineError, match="not a Medusa heads folder"):
        load_heads(tmp_path, model)
    (out / "medusa.json").write_text("{")
    with pytest.raises(RidgelineError, match="cannot read"):
        load_heads(out, model)


# ---------------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def tiny_setup(tiny_model_dir):
    from ridgeline.loader import load_model

    lm, tok = load_model(str(tiny_model_dir), "fp32")
    return lm.requires_grad_(False), tok


def _corpus(tmp_path):
    from ridgeline.corpus import prompt_text

    f = tmp_path / "corpus.txt"
    f.write_text(prompt_text() * 3)
    return str(f)


SMALL = dict(heads=2, sequences=12, prompt_len=8, generate=12, gen_batch=6, held_out=2, batch_size=16, lr=3e-3,
             checkpoint_every=2)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_lowers_the_loss_and_writes_heads(tiny_setup, tmp_path, optimizer):
    from ridgeline.train import train_medusa

    lm, tok = tiny_setup
    cfg = MedusaConfig(**SMALL, epochs=6, optimizer=optimizer)
    rep = train_medusa(lm, tok, tmp_path / "heads", cfg, corpus=_corpus(tmp_path))
    assert not rep.interrupted and rep.steps_done == cfg.steps == math.ceil(6 * 10 * 12 / 16)
    first, last = sum(rep.losses[:3]) / 3, sum(rep.losses[-3:]) / 3
    assert last < first
    manifest = json.loads((tmp_path / "heads" / "medusa.json").read_text())
    assert manifest["heads"] == 2 and manifest["base"]["weights_sha256"] == weights_hash(lm)
    assert len(manifest["accuracy"]["rank"]) == 2 and len(manifest["accuracy"]["rank"][0]) == 10
    assert 0 < manifest["draft_vocab"] <= 8192 and manifest["accuracy"]["draft_vocab_coverage"] > 0.5
    assert manifest["training"]["data"]["generated_tokens"] == 12 * 12
    assert not (tmp_path / "heads.ckpt").exists()


def test_interrupted_training_resumes_to_the_same_heads(tiny_setup, tmp_path):
    from ridgeline.train import train_medusa

    lm, tok = tiny_setup
    corpus = _corpus(tmp_path)
    cfg = MedusaConfig(**SMALL, epochs=3, optimizer="muon")
    straight = train_medusa(lm, tok, tmp_path / "a", cfg, corpus=corpus)

    def stop_at_5(what, done, total):
        if what.startswith("training") and done == 5:
            raise KeyboardInterrupt

    cut = train_medusa(lm, tok, tmp_path / "b", cfg, stop_at_5, corpus=corpus)
    assert cut.interrupted and cut.steps_done == 5 and not (tmp_path / "b").exists()
    assert (tmp_path / "b.ckpt" / "state.json").is_file()
    with pytest.raises(RidgelineError, match="pass --resume"):
        train_medusa(lm, tok, tmp_path / "b", cfg, corpus=corpus)
    done = train_medusa(lm, tok, tmp_path / "b", cfg, resume=True, corpus=corpus)
    assert done.losses == pytest.approx(straight.losses, rel=1e-6)
    a, _ = load_heads(tmp_path / "a", lm)
    b, _ = load_heads(tmp_path / "b", lm)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("bad,needle", [
    (dict(heads=0), "heads must be an integer from 1 to 16"), (dict(heads=100), "from 1 to 16"),
    (dict(layers=0), "layers per head"), (dict(lr=-1.0), "lr must be"), (dict(epochs=float("inf")), "epochs"),
    (dict(optimizer="sgd"), "optimizer must be one of"), (dict(generate=3, heads=4), "generate must be"),
    (dict(held_out=300), "held_out"), (dict(sequences=2, held_out=0, generate=8, batch_size=64), "fewer than a batch"),
    (dict(draft_vocab=-1), "draft_vocab"),
])
def test_bad_training_settings_are_refused(bad, needle):
    with pytest.raises(RidgelineError, match=needle):
        MedusaConfig(**bad)


# ---------------------------------------------------------------------------------------------
# bench and Workload integration


def test_speculative_workload_by_hand():
    from ridgeline.roofline import build_workload, evaluate, speculative_speedup
    from ridgeline.specs import Precision, Scenario, Speculation, get_device, spec_from_config

    spec = spec_from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                             "vocab_size": 256, "tie_word_embeddings": True})
    plain = build_workload(spec, Scenario(16, 10), Precision("fp32", "fp32", "fp32"))
    s = Speculation(tokens=4, accepted=2.5, heads=2)
    sw = build_workload(spec, Scenario(16, 10, speculation=s), Precision("fp32", "fp32", "fp32"))
    assert sw.decode.steps == 4 and sw.decode.tokens_per_step == 4 and sw.decode.tokens == 10
    assert list(sw.decode.contexts) == [16, 18, 21, 23]
    ops = {o.name: o for o in sw.decode.ops}
    assert ops["lm_head"].total_flops(4) == 4 * 2 * 4 * 64 * 256  # every verified token gets logits
    assert ops["draft_lm_head"].total_flops(4) == 4 * 2 * 2 * 64 * 256
    assert ops["draft_heads"].total_flops(4) == 4 * (2 * 2 * 64 * 64 + 2 * 64)
    assert ops["draft_lm_head"].total_bytes(4)["weights"] == 4 * 256 * 64 * 4  # the tied lm_head again
    # one weight stream per step instead of per token
    w_plain = sum(o.total_bytes(10)["weights"] for o in plain.decode.ops if o.name not in ("embedding",))
    w_spec = sum(o.total_bytes(4)["weights"] for o in sw.decode.ops if o.name not in ("embedding", "draft_heads",
                                                                                        "draft_lm_head"))
    assert w_spec == pytest.approx(w_plain * 4 / 10)
    assert Scenario(16, 10).to_json() == {"name": "16:10", "prompt": 16, "generate": 10, "batch": 1}
    assert Scenario(16, 10, speculation=s).to_json()["speculation"] == {"tokens": 4, "accepted": 2.5, "heads": 2,
                                                                        "untied": False, "draft_vocab": 0}
    small = build_workload(spec, Scenario(16, 10, speculation=Speculation(4, 2.5, 2, draft_vocab=64)),
                           Precision("fp32", "fp32", "fp32"))
    ops = {o.name: o for o in small.decode.ops}
    assert ops["draft_lm_head"].total_bytes(4)["weights"] == 4 * 64 * 64 * 4  # only the draft vocabulary's rows
    assert ops["draft_lm_head"].total_flops(4) == 4 * 2 * 2 * 64 * 64
    pred = evaluate(sw, get_device("raspberry-pi-5"))
    plain_pred, speedup = speculative_speedup(pred)
    assert speedup == pytest.approx(plain_pred.decode.time_s / pred.decode.time_s)
    assert pred.decode.tokens == 10
    for bad in [dict(tokens=0, accepted=1), dict(tokens=3, accepted=4), dict(tokens=3, accepted=0.5),
                dict(tokens=3, accepted=2, heads=-1)]:
        with pytest.raises(RidgelineError):
            Speculation(**bad)


@pytest.fixture(scope="module")
def tiny_heads(tiny_setup, tmp_path_factory):
    lm, _ = tiny_setup
    heads = MedusaHeads(lm.config.hidden_size, lm.config.vocab_size, 3).attach(lm.lm_head.weight)
    with torch.no_grad():
        for block in heads.blocks:
            block[0].linear.weight.normal_(0, 0.2)
    acc = {"rank": [[0.5, 0.2, 0.1], [0.3, 0.1, 0.05], [0.2, 0.05, 0.02]]}
    return save_heads(heads, tmp_path_factory.mktemp("h") / "heads", base_info(lm), {"accuracy": acc})


@pytest.mark.parametrize("impl", PATHS_RUN)
def test_bench_speculative_runs_equal_plain_and_carry_their_numbers(tiny_model_dir, tiny_heads, impl):
    from ridgeline.engine import spec_runner
    from ridgeline.measure import BenchConfig, SpecSetting, flat_row, place, result_json, run_bench
    from ridgeline.specs import Scenario, get_device

    sc = Scenario(16, 12)
    plain = run_bench(BenchConfig(str(tiny_model_dir), "torch", sc, "fp32", repeats=1, warmup=0, impl=impl))
    dev = get_device("raspberry-pi-5")
    for setting in [SpecSetting.parse(f"medusa:{tiny_heads}"), SpecSetting.parse("prompt-lookup:4"),
                    SpecSetting.parse("draft:1"), SpecSetting.parse(f"medusa:{tiny_heads}", "0;0,0;1")]:
        rec = run_bench(BenchConfig(str(tiny_model_dir), "torch", sc, "fp32", repeats=2, warmup=1, impl=impl,
                                    spec=setting), spec_factory=spec_runner)
        for s in rec.samples:
            assert s.generated == plain.samples[0].generated and s.cache_tokens == 28
            assert sum(s.tokens_per_step) == 12 and len(s.decode_step_s) == len(s.tokens_per_step)
        row = flat_row(result_json(rec, [place(rec, dev, "catalogue")]))
        assert row["spec"] == setting.label and row["tokens_per_step"] >= 1
        assert row["predicted_speedup_catalogue"] > 0 and row["run"].endswith(setting.label)
        if setting.kind == "medusa" and setting.tree == "auto":
            info = rec.to_json()["speculative"]
            assert info["cost_curve"]["decode_s"] > 0 and info["tree_choice"]["nodes"] == len(info["tree"])
    with pytest.raises(RidgelineError, match="runner factory"):
        run_bench(BenchConfig(str(tiny_model_dir), "torch", sc, "fp32", repeats=1, warmup=0,
                              spec=SpecSetting.parse("prompt-lookup")))


@pytest.mark.parametrize("text,needle", [
    ("medusa", "needs an argument"), ("eagle:x", "not one of medusa, prompt-lookup, draft"),
    ("prompt-lookup:0", "N >= 1"), ("draft", "draft:N"),
])
def test_bad_spec_settings_are_refused(text, needle):
    from ridgeline.measure import SpecSetting

    with pytest.raises(RidgelineError, match=needle):
        SpecSetting.parse(text)


def test_bad_accept_and_tree_options_are_refused():
    from ridgeline.measure import SpecSetting

    with pytest.raises(RidgelineError, match="typical"):
        SpecSetting.parse("prompt-lookup", accept="nucleus")
    with pytest.raises(RidgelineError, match="finite and > 0"):
        SpecSetting.parse("prompt-lookup", accept="typical:0")
    with pytest.raises(RidgelineError, match="--tree applies to medusa"):
        SpecSetting.parse("prompt-lookup", tree="0;1")
    assert SpecSetting.parse("medusa:x", accept="typical:1:0.1:0.2").acceptance() == {
        "kind": "typical", "temperature": 1.0, "eps": 0.1, "alpha": 0.2}


def test_heads_for_another_base_are_refused_by_the_bench(tiny_model_dir, tmp_path):
    from ridgeline.engine import spec_runner
    from ridgeline.measure import BenchConfig, SpecSetting, run_bench
    from ridgeline.specs import Scenario

    other = tiny_llama(seed=5)
    heads = MedusaHeads(HIDDEN, VOCAB, 2).attach(other.lm_head.weight)
    folder = save_heads(heads, tmp_path / "other", base_info(other))
    with pytest.raises(RidgelineError, match="weights differ"):
        run_bench(BenchConfig(str(tiny_model_dir), "torch", Scenario(8, 4), "fp32", repeats=1, warmup=0,
                              spec=SpecSetting.parse(f"medusa:{folder}")), spec_factory=spec_runner)


# ---------------------------------------------------------------------------------------------
# the bundled model: greedy equality on the lean path (the full 16 x 128 check is in benchmarks/medusa.py)


def test_bundled_model_speculative_greedy_equals_plain_greedy():
    from ridgeline.loader import load_model

    try:
        lm, tok = load_model("smollm2-135m", "fp32")
    except RidgelineError as exc:
        pytest.skip(f"bundled model unavailable: {exc}")
    from ridgeline.corpus import prompt_text

    text = prompt_text()
    ids = tok(text, add_special_tokens=False).input_ids
    heads = MedusaHeads(lm.config.hidden_size, lm.lm_head.weight.shape[0], 3).attach(lm.lm_head.weight)
    lean = LeanCausalLM.from_hf(lm, 256)
    for start in (0, 200):
        p = ids[start:start + 48]
        ref = greedy(lean, torch.tensor([p]), 24)
        for drafter in (MedusaDrafter(heads, Tree(((0,), (1,), (0, 0)))), PromptLookupDrafter()):
            assert SpecDecoder(lean, drafter).generate(p, 24) == ref, drafter.name


# ---------------------------------------------------------------------------------------------
# the command line


def _cli(*args):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr


def test_cli_train_accuracy_tree_and_bench(tiny_model_dir, tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "heads"
    res = _cli("medusa", "train", tiny_model_dir, "--heads", "2", "--out", out, "--sequences", "10", "--prompt-len", "8",
               "--generate", "12", "--held-out", "2", "--batch-size", "16", "--epochs", "2", "--corpus", corpus)
    assert res.exit_code == 0, (res.stderr, res.exception)
    assert "held-out accuracy" in res.stdout and (out / "heads.safetensors").is_file()
    res = _cli("medusa", "accuracy", tiny_model_dir, out, "--sequences", "2", "--generate", "8", "--corpus", corpus,
               "--json")
    assert res.exit_code == 0, (res.stderr, res.exception)
    assert len(json.loads(res.stdout)["top1"]) == 2
    res = _cli("medusa", "tree", tiny_model_dir, out, "--max-tokens", "4", "--repeats", "1", "--out", tmp_path / "t.json")
    assert res.exit_code == 0, (res.stderr, res.exception)
    assert "chosen tree" in res.stdout and parse_tree(str(tmp_path / "t.json")).size <= 4
    res = _cli("bench", "-m", tiny_model_dir, "-s", "12:8", "--repeats", "1", "--warmup", "0", "--reference", "none",
               "--spec", f"none,medusa:{out},prompt-lookup", "--tree", str(tmp_path / "t.json"))
    assert res.exit_code == 0, (res.stderr, res.exception)
    assert res.stdout.count("tokens per verify step") == 2 and "x plain decoding" in res.stdout


@pytest.mark.parametrize("args,needle", [
    (("medusa", "train", "{tiny}", "--heads", "0", "--out", "{tmp}/h"), "heads must be an integer from 1 to 16"),
    (("medusa", "train", "{tiny}", "--heads", "2", "--out", "{tmp}/h", "--lr", "-1"), "lr must be"),
    (("medusa", "accuracy", "{tiny}", "{tmp}"), "not a Medusa heads folder"),
    (("bench", "-m", "{tiny}", "--spec", "eagle:x"), "not one of medusa, prompt-lookup, draft"),
    (("bench", "-m", "{tiny}", "--spec", "medusa:{tmp}", "--tree", "0;0,0,0"), "has no parent"),
    (("bench", "-m", "{tiny}", "--spec", "prompt-lookup", "--accept", "typical:x"), "must be numbers"),
    (("analyze", "-m", "smollm2-135m", "-d", "raspberry-pi-5", "--spec-tokens", "4", "--spec-accepted", "5"),
     "between 1 and the 4 verified"),
    (("analyze", "-m", "smollm2-135m", "-d", "raspberry-pi-5", "--spec-tokens", "4"), "needs both"),
])
def test_cli_bad_input_is_one_line(tiny_model_dir, tmp_path, args, needle):
    res = _cli(*(a.format(tiny=tiny_model_dir, tmp=tmp_path) for a in args))
    _one_line_error(res, needle)


def test_cli_analyze_prints_the_predicted_speedup():
    res = _cli("analyze", "-m", "smollm2-135m", "-d", "raspberry-pi-5", "--spec-tokens", "6", "--spec-accepted", "2.2",
               "--spec-heads", "3", "--json")
    assert res.exit_code == 0, res.stderr
    spec = json.loads(res.stdout)["speculation"]
    assert spec["tokens"] == 6 and 1.0 < spec["predicted_speedup"] < 2.2
    assert spec["predicted_speedup"] == pytest.approx(spec["decode_tokens_per_s"] / spec["plain_decode_tokens_per_s"])
