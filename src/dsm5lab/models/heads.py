"""Criteria heads (pooled vector -> logits) and evidence heads (token states -> spans per channel).

A channel is one criterion: C = 9 in the multi-label format, 1 in the binary-pairs format.
Evidence heads share one interface (EvidenceHead): forward, loss, token_scores, decode.
Invalid logits are filled with NEG = -1e4 rather than -inf so fp16/bf16 stay finite; every
loss and score is computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsm5lab.models.crf import TAG_B, TAG_I, TAG_O, ChannelCRF

CRITERIA_HEADS = ("linear", "mlp", "mlp_residual", "gated")
EVIDENCE_HEADS = ("start_end_linear", "start_end_mlp", "biaffine", "bio_crf")
NEG = -1e4


# -- criteria heads ------------------------------------------------------------------------


class ResidualMLPHead(nn.Module):
    """x + MLP(x), LayerNorm, then a linear classifier."""

    def __init__(self, hidden_size: int, hidden_dim: int, n_out: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_size),
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, n_out))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.norm(pooled + self.mlp(pooled)))


class GatedHead(nn.Module):
    """A GLU-style layer, (W1 x) * sigmoid(W2 x), then a linear classifier."""

    def __init__(self, hidden_size: int, hidden_dim: int, n_out: int, dropout: float):
        super().__init__()
        self.value = nn.Linear(hidden_size, hidden_dim)
        self.gate = nn.Linear(hidden_size, hidden_dim)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, n_out))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.value(pooled) * torch.sigmoid(self.gate(pooled)))


def build_criteria_head(kind: str, hidden_size: int, hidden_dim: int, n_out: int,
                        dropout: float) -> nn.Module:
    """A criteria head of `kind`; forward(pooled (B, H)) -> logits (B, n_out)."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, n_out))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(hidden_size, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, n_out)
        )
    if kind == "mlp_residual":
        return ResidualMLPHead(hidden_size, hidden_dim, n_out, dropout)
    if kind == "gated":
        return GatedHead(hidden_size, hidden_dim, n_out, dropout)
    raise ValueError(f"unknown criteria head {kind!r}; allowed: {', '.join(CRITERIA_HEADS)}")


# -- evidence heads ------------------------------------------------------------------------


def _channel_mean(per_pair: Tensor, channel_mask: Tensor) -> Tensor:
    # Weighted mean over (example, channel) pairs; an all-zero channel_mask gives a zero that
    # keeps its grad_fn, so the caller's backward() never breaks on a batch without evidence.
    weight = channel_mask.to(per_pair)
    return torch.where(weight > 0, per_pair * weight, 0.0).sum() / weight.sum().clamp(min=1.0)


def _span_valid(mask: Tensor, max_span_len: int) -> Tensor:
    # (B, 1, T, T): i <= j < i + max_span_len, both ends real tokens.
    T = mask.shape[1]
    i = torch.arange(T, device=mask.device)
    band = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_span_len)
    real = mask.bool()
    return (band & real[:, :, None] & real[:, None, :]).unsqueeze(1)


def _spans_tensor(start: Tensor, end: Tensor, score: Tensor, found: Tensor) -> Tensor:
    # (B, C, 3) float: [start, end, score], or [-1, -1, 0] where nothing was found.
    out = torch.stack([start.float(), end.float(), score.float()], dim=-1)
    return torch.where(found[..., None], out, out.new_tensor([-1.0, -1.0, 0.0]))


class EvidenceHead(nn.Module):
    """Token states (B, T, H) -> per-channel evidence logits; subclasses define the parametrisation."""

    def __init__(self, kind: str, n_channels: int, max_span_len: int):
        super().__init__()
        self.kind, self.n_channels, self.max_span_len = kind, n_channels, max_span_len

    def forward(self, tokens: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Logits per channel: start/end (B, C, T), span (B, C, T, T) or emissions (B, C, T, 3)."""
        raise NotImplementedError

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor], mask: Tensor,
             channel_mask: Tensor) -> Tensor:
        """Mean loss over the (example, channel) pairs where channel_mask is 1."""
        raise NotImplementedError

    def token_scores(self, outputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        """P(token is evidence) per channel, (B, C, T) in [0, 1]; 0 at masked tokens."""
        raise NotImplementedError

    def decode(self, outputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Best span per (b, c) as (B, C, 3) float [start, end, score]; [-1, -1, 0] if none."""
        raise NotImplementedError


class StartEndHead(EvidenceHead):
    """Independent start and end logits per token and channel (multi-hot: several spans allowed)."""

    def __init__(self, kind, hidden_size, hidden_dim, n_channels, dropout, max_span_len):
        super().__init__(kind, n_channels, max_span_len)
        if kind == "start_end_mlp":
            self.features = nn.Sequential(nn.Linear(hidden_size, hidden_dim), nn.GELU(), nn.Dropout(dropout))
            hidden_size = hidden_dim
        else:
            self.features = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, 2 * n_channels)

    def forward(self, tokens, mask):
        B, T, _ = tokens.shape
        logits = self.proj(self.features(tokens)).view(B, T, 2, self.n_channels).permute(2, 0, 3, 1)
        logits = logits.masked_fill(~mask.bool()[None, :, None, :], NEG)
        return {"start": logits[0], "end": logits[1]}

    def loss(self, outputs, targets, mask, channel_mask):
        real = mask.bool()[:, None, :].float()
        per_token = sum(
            F.binary_cross_entropy_with_logits(
                outputs[key].float(), targets[key].to(real), reduction="none"
            ) for key in ("start", "end")
        )
        per_pair = (per_token * real).sum(-1) / (2 * real.sum(-1).clamp(min=1.0))
        return _channel_mean(per_pair, channel_mask)

    def token_scores(self, outputs, mask):
        probs = torch.maximum(torch.sigmoid(outputs["start"].float()), torch.sigmoid(outputs["end"].float()))
        return probs * mask.bool()[:, None, :]

    def decode(self, outputs, mask):
        L = self.max_span_len
        real = mask.bool()[:, None, :]
        log_start = F.logsigmoid(outputs["start"].float()).masked_fill(~real, float("-inf"))
        log_end = F.logsigmoid(outputs["end"].float()).masked_fill(~real, float("-inf"))
        # band[..., i, d] = log p(start i) + log p(end i + d) for d < L: O(T * L), not O(T^2).
        ends = F.pad(log_end, (0, L - 1), value=float("-inf")).unfold(-1, L, 1)
        band = (log_start[..., None] + ends).flatten(-2)
        best, idx = band.max(dim=-1)
        start = idx // L
        return _spans_tensor(start, start + idx % L, best.exp(), torch.isfinite(best))


class BiaffineHead(EvidenceHead):
    """Biaffine span scores: [b, c, i, j] = [s_i; 1]^T U_c [e_j; 1] over start/end projections."""

    def __init__(self, kind, hidden_size, hidden_dim, n_channels, dropout, max_span_len):
        super().__init__(kind, n_channels, max_span_len)
        self.start_proj = nn.Sequential(nn.Linear(hidden_size, hidden_dim), nn.GELU(), nn.Dropout(dropout))
        self.end_proj = nn.Sequential(nn.Linear(hidden_size, hidden_dim), nn.GELU(), nn.Dropout(dropout))
        # The appended 1s give each channel its linear terms and bias inside the same U.
        self.U = nn.Parameter(torch.randn(n_channels, hidden_dim + 1, hidden_dim + 1) / (hidden_dim + 1))

    def forward(self, tokens, mask):
        ones = tokens.new_ones(*tokens.shape[:2], 1)
        s = torch.cat([self.start_proj(tokens), ones], dim=-1)
        e = torch.cat([self.end_proj(tokens), ones], dim=-1)
        span = torch.einsum("bih,chk,bjk->bcij", s, self.U.to(s.dtype), e)
        return {"span": span.masked_fill(~_span_valid(mask, self.max_span_len), NEG)}

    def loss(self, outputs, targets, mask, channel_mask):
        valid = _span_valid(mask, self.max_span_len).float()
        target = targets["span"].to(valid)
        cell = F.binary_cross_entropy_with_logits(outputs["span"].float(), target, reduction="none")
        pos, neg = target * valid, (1.0 - target) * valid
        n_pos, n_neg = pos.sum((-2, -1)), neg.sum((-2, -1)).clamp(min=1.0)
        pos_term = (cell * pos).sum((-2, -1)) / n_pos.clamp(min=1.0)
        neg_term = (cell * neg).sum((-2, -1)) / n_neg
        # Positives and negatives weigh half each; a pair with no gold span is all negatives.
        per_pair = torch.where(n_pos > 0, 0.5 * (pos_term + neg_term), neg_term)
        return _channel_mean(per_pair, channel_mask)

    def token_scores(self, outputs, mask):
        T = mask.shape[1]
        probs = torch.sigmoid(outputs["span"].float()) * _span_valid(mask, self.max_span_len)
        # reach[i, k] = best span starting at i and ending at or after k; it covers k iff i <= k.
        reach = probs.flip(-1).cummax(dim=-1).values.flip(-1)
        starts_before = torch.ones(T, T, dtype=torch.bool, device=mask.device).triu()
        return (reach * starts_before).amax(dim=-2) * mask.bool()[:, None, :]

    def decode(self, outputs, mask):
        T = mask.shape[1]
        valid = _span_valid(mask, self.max_span_len)
        flat = outputs["span"].float().masked_fill(~valid, float("-inf")).flatten(-2)
        best, idx = flat.max(dim=-1)
        return _spans_tensor(idx // T, idx % T, torch.sigmoid(best), torch.isfinite(best))


class BioCrfHead(EvidenceHead):
    """BIO emissions per channel with a CRF per channel (tags O=0, B=1, I=2)."""

    def __init__(self, kind, hidden_size, hidden_dim, n_channels, dropout, max_span_len):
        super().__init__(kind, n_channels, max_span_len)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, 3 * n_channels)
        self.crf = ChannelCRF(n_channels, num_tags=3)

    def forward(self, tokens, mask):
        B, T, _ = tokens.shape
        emissions = self.proj(self.dropout(tokens)).view(B, T, self.n_channels, 3).permute(0, 2, 1, 3)
        return {"emissions": emissions}

    def loss(self, outputs, targets, mask, channel_mask):
        nll = self.crf.nll(outputs["emissions"], targets["tags"], mask)
        per_pair = nll / mask.bool().sum(1, keepdim=True).clamp(min=1)
        return _channel_mean(per_pair, channel_mask)

    def token_scores(self, outputs, mask):
        marginals = self.crf.marginals(outputs["emissions"], mask)
        return marginals[..., TAG_B] + marginals[..., TAG_I]

    def decode(self, outputs, mask):
        tags = self.crf.viterbi(outputs["emissions"], mask)
        probs = self.token_scores(outputs, mask)
        return _best_run(tags, probs, self.max_span_len)


def _best_run(tags: Tensor, probs: Tensor, max_span_len: int) -> Tensor:
    # Runs are maximal B I* stretches; a stray I after O also opens one (only reachable if the
    # CRF learns to allow O->I). Each run is scored by its tokens' mean evidence probability.
    B, C, T = tags.shape
    inside = tags != TAG_O
    before = F.pad(inside[..., :-1], (1, 0), value=False)
    opens = inside & ((tags == TAG_B) | ~before)
    run = opens.long().cumsum(-1) * inside  # run id per token, 0 outside any run
    zeros = probs.new_zeros(B, C, T + 1)
    total = zeros.scatter_add(-1, run, probs * inside)
    count = zeros.scatter_add(-1, run, inside.to(probs))
    pos = torch.arange(T, device=tags.device).expand(B, C, T)
    first = run.new_full((B, C, T + 1), T).scatter_reduce(-1, run, pos, "amin")
    last = run.new_full((B, C, T + 1), -1).scatter_reduce(-1, run, pos, "amax")
    mean = torch.where(count > 0, total / count.clamp(min=1.0), -1.0)
    mean[..., 0] = -1.0
    score, best = mean.max(dim=-1)
    start = first.gather(-1, best[..., None]).squeeze(-1)
    end = torch.minimum(last.gather(-1, best[..., None]).squeeze(-1), start + max_span_len - 1)
    return _spans_tensor(start, end, score, score >= 0)


def build_evidence_head(kind: str, hidden_size: int, hidden_dim: int, n_channels: int, dropout: float,
                        max_span_len: int = 64) -> EvidenceHead:
    """An evidence head of `kind` over C = n_channels criteria; see EvidenceHead for its methods."""
    classes = {"start_end_linear": StartEndHead, "start_end_mlp": StartEndHead,
               "biaffine": BiaffineHead, "bio_crf": BioCrfHead}
    if kind not in classes:
        raise ValueError(f"unknown evidence head {kind!r}; allowed: {', '.join(EVIDENCE_HEADS)}")
    if max_span_len < 1:
        raise ValueError(f"max_span_len must be at least 1, got {max_span_len}")
    return classes[kind](kind, hidden_size, hidden_dim, n_channels, dropout, max_span_len)


def spans_to_targets(spans: list[list[list[tuple[int, int]]]], T: int, kind: str,
                     max_span_len: int | None = None) -> dict[str, Tensor]:
    """Targets for head `kind` from spans[b][c] = inclusive token spans (start, end) over T tokens.

    Spans are clipped to the T tokens (those starting at or past T, or with start < 0, are
    dropped). With max_span_len, longer spans are cut to their first max_span_len tokens so the
    span heads still see a positive they can score.
    """
    if kind not in EVIDENCE_HEADS:
        raise ValueError(f"unknown evidence head {kind!r}; allowed: {', '.join(EVIDENCE_HEADS)}")
    B, C = len(spans), max((len(row) for row in spans), default=0)
    if any(len(row) != C for row in spans):
        raise ValueError("spans_to_targets: every example needs the same number of channels")
    start, end = torch.zeros(B, C, T), torch.zeros(B, C, T)
    span = torch.zeros(B, C, T, T) if kind == "biaffine" else None
    tags = torch.full((B, C, T), TAG_O, dtype=torch.long)
    for b, row in enumerate(spans):
        for c, channel in enumerate(row):
            clean = sorted((s, min(e, T - 1)) for s, e in channel if 0 <= s < T and e >= s)
            if max_span_len is not None:
                clean = [(s, min(e, s + max_span_len - 1)) for s, e in clean]
            for s, e in clean:
                start[b, c, s] = end[b, c, e] = 1.0
                if span is not None:
                    span[b, c, s, e] = 1.0
            for s, e in _merge(clean):
                tags[b, c, s], tags[b, c, s + 1:e + 1] = TAG_B, TAG_I
    if kind == "biaffine":
        return {"span": span}
    if kind == "bio_crf":
        return {"tags": tags}
    return {"start": start, "end": end}


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    # Sorted inclusive spans -> overlapping ones merged; touching ones stay separate (B restarts).
    merged: list[list[int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]
