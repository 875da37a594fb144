"""Poolings, criteria heads, evidence heads and the CRF on small random encoder-like inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dsm5lab.models.crf import ChannelCRF
from dsm5lab.models.heads import (
    CRITERIA_HEADS,
    EVIDENCE_HEADS,
    NEG,
    build_criteria_head,
    build_evidence_head,
    spans_to_targets,
)
from dsm5lab.models.pooling import POOLINGS, build_pooling
from dsm5lab.training.losses import CRITERIA_LOSSES, criteria_loss, pos_weight_from_counts

B, T, H = 3, 12, 16
PAD_FROM = 7  # row 1 has 7 real tokens, then padding


def encoder_like(seed: int = 0):
    """last_hidden, mask and all_hidden (3 layers, the last one being last_hidden, as in HF)."""
    g = torch.Generator().manual_seed(seed)
    layers = tuple(torch.randn(B, T, H, generator=g).requires_grad_() for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, PAD_FROM:] = False
    return layers[-1], mask, layers


def assert_all_params_learn(*modules):
    for module in modules:
        for name, p in module.named_parameters():
            where = f"{type(module).__name__}.{name}"
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{where} gets no gradient"


# -- poolings and criteria heads ------------------------------------------------------------


@pytest.mark.parametrize("loss_kind", CRITERIA_LOSSES)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head_kind", CRITERIA_HEADS)
def test_criteria_stack_forward_backward(head_kind, pooling, loss_kind):
    last, mask, all_hidden = encoder_like()
    pool, head = build_pooling(pooling, H), build_criteria_head(head_kind, H, 8, 9, dropout=0.1)
    logits = head(pool(last, mask, all_hidden))
    assert logits.shape == (B, 9)
    targets = (torch.rand(B, 9, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    loss = criteria_loss(loss_kind, logits, targets, pos_weight=pos_weight_from_counts([1] * 9, 10),
                         label_smoothing=0.05)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert_all_params_learn(pool, head)
    assert last.grad[:, 0].abs().sum() > 0
    for layer in all_hidden:  # padding never receives gradient
        assert layer.grad is None or layer.grad[1, PAD_FROM:].abs().sum() == 0


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_ignores_padding(pooling):
    last, mask, all_hidden = encoder_like()
    pool = build_pooling(pooling, H)
    before = pool(last, mask, all_hidden)
    noisy = tuple(h.detach().clone() for h in all_hidden)
    for h in noisy:
        h[1, PAD_FROM:] += 100.0
    assert before.shape == (B, H)
    torch.testing.assert_close(pool(noisy[-1], mask, noisy), before)


def test_pooling_errors_are_clear():
    last, mask, _ = encoder_like()
    with pytest.raises(ValueError, match="output_hidden_states"):
        build_pooling("last_2_layer_mix", H)(last, mask)
    with pytest.raises(ValueError, match="cls, mean, attention, last_2_layer_mix"):
        build_pooling("max", H)
    with pytest.raises(ValueError, match="linear, mlp, mlp_residual, gated"):
        build_criteria_head("deep", H, 8, 9, 0.1)


# -- evidence heads ---------------------------------------------------------------------------


def random_spans(C: int, seed: int, lengths=(T, PAD_FROM, T)):
    g = torch.Generator().manual_seed(seed)
    spans = []
    for length in lengths:
        row = []
        for _ in range(C):
            n = int(torch.randint(0, 3, (1,), generator=g))
            starts = torch.randint(0, length, (n,), generator=g).tolist()
            widths = torch.randint(0, 3, (n,), generator=g).tolist()
            row.append([(s, min(s + w, length - 1)) for s, w in zip(starts, widths)])
        spans.append(row)
    spans[0][0] = [(2, 4)]  # at least one positive
    return spans


def corrupt_padding(targets: dict, mask: torch.Tensor) -> dict:
    pad = ~mask[:, None, :]
    out = {}
    for key, value in targets.items():
        if key == "span":
            out[key] = value.masked_fill(pad[..., :, None] | pad[..., None, :], 1.0)
        else:
            out[key] = value.masked_fill(pad, 2 if key == "tags" else 1.0)
    return out


@pytest.mark.parametrize("C", [9, 1])
@pytest.mark.parametrize("kind", EVIDENCE_HEADS)
def test_evidence_head_contract(kind, C):
    L = 4
    tokens, mask, _ = encoder_like()
    head = build_evidence_head(kind, H, 8, C, dropout=0.1, max_span_len=L)
    targets = spans_to_targets(random_spans(C, seed=C), T, kind)
    channel_mask = torch.ones(B, C)
    channel_mask[2] = 0.0
    out = head(tokens, mask)
    expected = {"start_end_linear": {"start": (B, C, T), "end": (B, C, T)},
                "start_end_mlp": {"start": (B, C, T), "end": (B, C, T)},
                "biaffine": {"span": (B, C, T, T)}, "bio_crf": {"emissions": (B, C, T, 3)}}[kind]
    assert {k: tuple(v.shape) for k, v in out.items()} == expected

    loss = head.loss(out, targets, mask, channel_mask)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    torch.testing.assert_close(head.loss(out, corrupt_padding(targets, mask), mask, channel_mask), loss)
    loss.backward()
    assert_all_params_learn(head)
    assert tokens.grad[0].abs().sum() > 0
    assert tokens.grad[1, PAD_FROM:].abs().sum() == 0 and tokens.grad[2].abs().sum() == 0

    empty = head.loss(head(tokens, mask), targets, mask, torch.zeros(B, C))
    assert empty.item() == 0.0 and empty.grad_fn is not None
    empty.backward()

    with torch.no_grad():
        scores, spans = head.token_scores(out, mask), head.decode(out, mask)
    assert scores.shape == (B, C, T) and scores.min() >= 0 and scores.max() <= 1
    assert scores[1, :, PAD_FROM:].abs().sum() == 0
    assert spans.shape == (B, C, 3) and spans.dtype == torch.float32
    lengths = mask.sum(1)[:, None].expand(B, C)
    found = spans[..., 0] >= 0
    start, end, score = spans.unbind(-1)
    assert (start[found] <= end[found]).all() and (end[found] < start[found] + L).all()
    assert (end[found] < lengths[found]).all() and (score >= 0).all() and (score <= 1).all()
    assert (spans[~found] == torch.tensor([-1.0, -1.0, 0.0])).all()


def test_biaffine_masks_invalid_cells():
    L = 3
    tokens, mask, _ = encoder_like()
    span = build_evidence_head("biaffine", H, 8, 2, 0.0, max_span_len=L)(tokens, mask)["span"]
    for b, i, j in itertools.product(range(B), range(T), range(T)):
        valid = i <= j < i + L and mask[b, i] and mask[b, j]
        assert ((span[b, :, i, j] == NEG).all() != valid), (b, i, j)


def test_span_decoding_and_scores_match_brute_force():
    g = torch.Generator().manual_seed(3)
    L = 4
    tokens, mask, _ = encoder_like()
    start_end = build_evidence_head("start_end_linear", H, 8, 2, 0.0, max_span_len=L)
    biaffine = build_evidence_head("biaffine", H, 8, 2, 0.0, max_span_len=L)
    with torch.no_grad():
        se = {"start": torch.randn(B, 2, T, generator=g), "end": torch.randn(B, 2, T, generator=g)}
        bi = biaffine(tokens, mask)
        se_spans, bi_spans = start_end.decode(se, mask), biaffine.decode(bi, mask)
        bi_scores = biaffine.token_scores(bi, mask)
    p_start, p_end, p_span = se["start"].sigmoid(), se["end"].sigmoid(), bi["span"].sigmoid()
    for b, c in itertools.product(range(B), range(2)):
        n = int(mask[b].sum())
        cells = [(i, j) for i in range(n) for j in range(i, min(i + L, n))]
        i, j = max(cells, key=lambda ij: p_start[b, c, ij[0]] * p_end[b, c, ij[1]])
        assert se_spans[b, c].tolist() == pytest.approx([i, j, float(p_start[b, c, i] * p_end[b, c, j])])
        i, j = max(cells, key=lambda ij: p_span[b, c, ij[0], ij[1]])
        assert bi_spans[b, c].tolist() == pytest.approx([i, j, float(p_span[b, c, i, j])])
        for k in range(n):
            cover = max(float(p_span[b, c, i, j]) for i, j in cells if i <= k <= j)
            assert float(bi_scores[b, c, k]) == pytest.approx(cover)


@pytest.mark.parametrize("kind", EVIDENCE_HEADS)
def test_spans_to_targets_round_trips_through_decode(kind):
    spans = [[[(2, 4)], [], [(0, 0)]], [[(5, 6)], [(1, 3)], []]]
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 7:] = False
    head = build_evidence_head(kind, H, 8, 3, 0.0, max_span_len=4)
    targets = spans_to_targets(spans, 8, kind)
    # Clean logits: large where the target is on, very negative elsewhere.
    if kind == "bio_crf":
        outputs = {"emissions": torch.nn.functional.one_hot(targets["tags"], 3).float() * 10}
    else:
        outputs = {k: v * 20 - 10 for k, v in targets.items()}
    decoded = head.decode(outputs, mask)
    for b, c in itertools.product(range(2), range(3)):
        if spans[b][c]:
            s, e = spans[b][c][0]
            assert decoded[b, c, :2].tolist() == [s, e] and decoded[b, c, 2] > 0.99
        else:
            assert decoded[b, c, 2] < 0.01


def test_biaffine_loss_balances_positives_and_negatives():
    head = build_evidence_head("biaffine", H, 8, 2, 0.0, max_span_len=3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    span = torch.zeros(1, 2, 3, 3)
    span[0, 0, 0, 1] = 2.0
    targets = spans_to_targets([[[(0, 1)], []]], 3, "biaffine")
    # Channel 0: one positive (logit 2) against five negatives (logit 0) weigh half each;
    # channel 1 has no gold span, so it is the mean over its six negatives.
    expected = (0.5 * math.log(1 + math.exp(-2)) + 0.5 * math.log(2) + math.log(2)) / 2
    loss = head.loss({"span": span}, targets, mask, torch.ones(1, 2))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_bio_decode_splits_touching_runs_and_keeps_the_surer_one():
    head = build_evidence_head("bio_crf", H, 8, 1, 0.0, max_span_len=8)
    tags = spans_to_targets([[[(0, 1), (2, 4)]]], 6, "bio_crf")["tags"]
    assert tags[0, 0].tolist() == [1, 2, 1, 2, 2, 0]
    emissions = torch.nn.functional.one_hot(tags, 3).float() * torch.tensor([8.0, 8, 3, 3, 3, 8])[:, None]
    decoded = head.decode({"emissions": emissions}, torch.ones(1, 6, dtype=torch.bool))
    assert decoded[0, 0, :2].tolist() == [0, 1] and decoded[0, 0, 2] > 0.99


def test_spans_to_targets_bio_merges_clips_and_cuts():
    tags = spans_to_targets([[[(2, 4), (4, 6), (8, 8)], [(0, 1), (2, 3)], [(10, 20), (15, 16), (-1, 2)]]],
                            12, "bio_crf")["tags"][0]
    assert tags[0].tolist() == [0, 0, 1, 2, 2, 2, 2, 0, 1, 0, 0, 0]  # overlap merges
    assert tags[1].tolist()[:4] == [1, 2, 1, 2]  # touching spans stay two
    assert tags[2].tolist() == [0] * 10 + [1, 2]  # clipped to T; out-of-range spans dropped
    span = spans_to_targets([[[(1, 9)]]], 12, "biaffine", max_span_len=4)["span"]
    assert span.nonzero().tolist() == [[0, 0, 1, 4]]
    with pytest.raises(ValueError, match="start_end_linear"):
        spans_to_targets([[[]]], 4, "crf")


@pytest.mark.parametrize("kind", ["start_end_linear", "bio_crf"])
def test_head_overfits_a_fixed_span(kind):
    torch.manual_seed(0)
    features, mask = torch.randn(2, 10, H), torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    spans = [[[(3, 5)]], [[(1, 2)]]]
    head = build_evidence_head(kind, H, 16, 1, dropout=0.0, max_span_len=8)
    targets, channel_mask = spans_to_targets(spans, 10, kind), torch.ones(2, 1)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(200):
        loss = head.loss(head(features, mask), targets, mask, channel_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        decoded = head.decode(head(features, mask), mask)
    assert decoded[:, 0, :2].tolist() == [[3, 5], [1, 2]]


# -- CRF against brute force ----------------------------------------------------------------


def brute_force(crf: ChannelCRF, emissions, mask):
    """logZ, best path and marginals per (b, c) by enumerating every tag path over real tokens."""
    Bn, C, Tn, K = emissions.shape
    log_z, marg = torch.zeros(Bn, C), torch.zeros(Bn, C, Tn, K)
    best = torch.zeros(Bn, C, Tn, dtype=torch.long)
    for b, c in itertools.product(range(Bn), range(C)):
        real = mask[b].nonzero().squeeze(1).tolist()
        paths = list(itertools.product(range(K), repeat=len(real)))
        scores = torch.stack([path_score(crf, emissions[b, c], c, real, p) for p in paths])
        log_z[b, c] = scores.logsumexp(0)
        best[b, c, real] = torch.tensor(paths[int(scores.argmax())])
        probs = (scores - log_z[b, c]).exp()
        for p, prob in zip(paths, probs):
            marg[b, c, real, list(p)] += prob
    return log_z, best, marg


def path_score(crf, em, c, real, path):
    score = crf.start[c, path[0]] + crf.end[c, path[-1]] + sum(em[t, y] for t, y in zip(real, path))
    return score + sum(crf.transitions[c, a, y] for a, y in zip(path, path[1:]))


def random_crf_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    crf = ChannelCRF(2)
    with torch.no_grad():  # random parameters, so that every path (even O->I) matters
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    emissions = torch.randn(4, 2, 4, 3, generator=g)
    # full, right-padded, length 1, and (beyond the promise of a real first token) a left/right pad
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    tags = torch.randint(0, 3, (4, 2, 4), generator=g)
    return crf, emissions, mask, tags


@pytest.mark.parametrize("seed", [0, 1])
def test_crf_matches_brute_force(seed):
    crf, emissions, mask, tags = random_crf_case(seed)
    with torch.no_grad():
        log_z, best, marg = brute_force(crf, emissions, mask)
        nll = crf.nll(emissions, tags, mask)
        gold = torch.stack([torch.stack([
            path_score(crf, emissions[b, c], c, mask[b].nonzero().squeeze(1).tolist(),
                       tags[b, c][mask[b]].tolist()) for c in range(2)]) for b in range(4)])
        torch.testing.assert_close(nll, log_z - gold)
        assert torch.equal(crf.viterbi(emissions, mask), best)
        marginals = crf.marginals(emissions, mask)
    torch.testing.assert_close(marginals, marg)
    torch.testing.assert_close(marginals.sum(-1), mask[:, None, :].float().expand(4, 2, 4))


def test_crf_default_init_keeps_bio_valid():
    crf = ChannelCRF(3)
    emissions = torch.randn(5, 3, 20, 3) * 5
    emissions[..., 2] += 3  # tempt it with I everywhere
    tags = crf.viterbi(emissions, torch.ones(5, 20, dtype=torch.bool))
    previous = torch.cat([torch.zeros(5, 3, 1, dtype=torch.long), tags[..., :-1]], dim=-1)
    assert (tags == 2).any() and not ((tags == 2) & (previous == 0)).any()
    assert crf.transitions.requires_grad and crf.transitions[0, 0, 2] < -1000
