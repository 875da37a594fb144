"""One shared encoder with a criteria head, an evidence head, or both (joint)."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from dsm5lab.models.heads import build_criteria_head, build_evidence_head
from dsm5lab.models.pooling import build_pooling


@dataclass(frozen=True)
class ModelSpec:
    task: str  # criteria | evidence | joint
    channels: int  # 9 (multi_label) or 1 (binary_pairs)
    pooling: str
    criteria_head: str
    evidence_head: str
    hidden_dim: int
    dropout: float
    coupling: str  # independent | coupled
    max_span_tokens: int

    @property
    def has_criteria(self) -> bool:
        return self.task in ("criteria", "joint")

    @property
    def has_evidence(self) -> bool:
        return self.task in ("evidence", "joint")

    def to_dict(self) -> dict:
        return asdict(self)


def group_max(values: Tensor, index: Tensor, n: int) -> Tensor:
    """Max of rows of `values` (N, C) per group id in `index` (N,), giving (n, C)."""
    out = values.new_full((n, values.shape[1]), float("-inf"))
    return out.scatter_reduce(0, index.unsqueeze(1).expand_as(values), values, "amax", include_self=False)


def leading_tokens(mask: Tensor, text_mask: Tensor | None) -> Tensor:
    """1 on each window's tokens before its text (the first special token, and a binary_pairs criterion
    description): Longformer's global attention, as it is used for a classification token and a question."""
    lead = torch.zeros_like(mask)
    if text_mask is not None:
        lead = ((torch.cumsum(text_mask.long(), dim=1) == 0) & mask.bool()).long()
    lead[:, 0] = mask[:, 0]
    return lead


class MultiTaskModel(nn.Module):
    """Encoder -> (pooling -> criteria head) and/or (token states -> evidence head + sentence scorer)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, spec: ModelSpec):
        super().__init__()
        self.encoder = encoder
        self.spec = spec
        # DistilBERT and ModernBERT take no token_type_ids (their **kwargs would swallow them unseen);
        # Longformer takes a global_attention_mask
        named = inspect.signature(encoder.forward).parameters
        self.encoder_inputs = frozenset(k for k in ("token_type_ids", "global_attention_mask") if k in named)
        c = spec.channels
        if spec.has_criteria:
            self.pooling = build_pooling(spec.pooling, hidden_size)
            self.criteria_head = build_criteria_head(spec.criteria_head, hidden_size, spec.hidden_dim, c, spec.dropout)
        if spec.has_evidence:
            self.evidence_head = build_evidence_head(
                spec.evidence_head, hidden_size, spec.hidden_dim, c, spec.dropout, max_span_len=spec.max_span_tokens
            )
            self.sentence_head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(hidden_size, c))
            if spec.coupling == "coupled" and spec.has_criteria:
                # criteria probabilities of the window shift every token state the evidence head sees
                self.couple = nn.Linear(c, hidden_size)

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = batch["attention_mask"]
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if "token_type_ids" in batch and "token_type_ids" in self.encoder_inputs:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if "global_attention_mask" in self.encoder_inputs:
            kwargs["global_attention_mask"] = leading_tokens(mask, batch.get("text_mask"))
        need_layers = self.spec.has_criteria and self.spec.pooling == "last_2_layer_mix"
        enc = self.encoder(**kwargs, output_hidden_states=need_layers)
        last = enc.last_hidden_state
        out: dict[str, Tensor] = {}
        window_logits = None
        if self.spec.has_criteria:
            pooled = self.pooling(last, mask, enc.hidden_states if need_layers else None)
            window_logits = self.criteria_head(pooled)
            out["window_logits"] = window_logits
            out["logits"] = group_max(window_logits, batch["window_group"], int(batch["n_groups"]))
        if self.spec.has_evidence:
            tokens = last
            if window_logits is not None and hasattr(self, "couple"):
                tokens = tokens + self.couple(torch.sigmoid(window_logits)).unsqueeze(1)
            out["evidence"] = self.evidence_head(tokens, mask)
            if int(batch.get("n_sentences", 0)) > 0:
                out["sentence_logits"] = self._sentence_logits(tokens, batch)
        return out

    def _sentence_logits(self, tokens: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Per sentence: mean token logit within each window piece of the sentence, max over pieces."""
        smap = batch["sentence_map"]
        n_sent = int(batch["n_sentences"])
        valid = smap >= 0
        token_logits = self.sentence_head(tokens[valid])  # (N, C)
        window = torch.arange(smap.shape[0], device=smap.device).unsqueeze(1).expand_as(smap)[valid]
        keys = window * n_sent + smap[valid]
        pieces, inverse = torch.unique(keys, return_inverse=True)
        sums = token_logits.new_zeros((len(pieces), token_logits.shape[1])).index_add(0, inverse, token_logits)
        counts = torch.bincount(inverse, minlength=len(pieces)).clamp(min=1).unsqueeze(1)
        return group_max(sums / counts, pieces % n_sent, n_sent)
