"""A linear-chain CRF with one independent chain per channel, vectorised over batch and channels.

Shapes: emissions (B, C, T, K), tags (B, C, T), mask (B, T). transitions[c, i, j] scores
tag i followed by tag j. Masked positions are skipped: the chain links each real token
to the next real one, so right padding, left padding and gaps all work. All sums run in
float32 whatever the emissions' dtype, so the CRF is safe under fp16/bf16 autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TAG_O, TAG_B, TAG_I = 0, 1, 2
FORBIDDEN = -1e4  # strong enough that Viterbi never picks O->I; a parameter, so still learnable


class ChannelCRF(nn.Module):
    """C independent linear-chain CRFs over the same tokens (one per criterion channel)."""

    def __init__(self, n_channels: int, num_tags: int = 3):
        super().__init__()
        self.n_channels, self.num_tags = n_channels, num_tags
        self.transitions = nn.Parameter(torch.zeros(n_channels, num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(n_channels, num_tags))
        self.end = nn.Parameter(torch.zeros(n_channels, num_tags))
        if num_tags == 3:  # BIO: an I may only follow B or I
            with torch.no_grad():
                self.transitions[:, TAG_O, TAG_I] = FORBIDDEN
                self.start[:, TAG_I] = FORBIDDEN

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood of the gold tags, (B, C); 0 for a row without real tokens."""
        emissions, mask, perm = self._pack(emissions, mask)
        tags = tags.gather(2, perm[:, None, :].expand_as(tags)).clamp(0, self.num_tags - 1)
        tags = tags.masked_fill(~mask[:, None, :], 0)
        log_z = torch.logsumexp(self._forward_alphas(emissions, mask)[:, :, -1] + self.end, dim=-1)
        nll = log_z - self._path_score(emissions, tags, mask)
        return nll.masked_fill(~mask[:, :1], 0.0)

    def marginals(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Per-token tag marginals p(y_t = k | x), (B, C, T, K); zeros at masked positions."""
        emissions, packed_mask, perm = self._pack(emissions, mask)
        alphas = self._forward_alphas(emissions, packed_mask)
        betas = self._backward_betas(emissions, packed_mask)
        probs = torch.softmax(alphas + betas, dim=-1) * packed_mask[:, None, :, None]
        return self._unpack(probs, perm)

    def viterbi(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Most likely tag sequence per (b, c), (B, C, T) long; 0 at masked positions."""
        emissions, mask, perm = self._pack(emissions, mask)
        B, C, T, K = emissions.shape
        score = self.start + emissions[:, :, 0]
        identity = torch.arange(K, device=emissions.device).expand(B, C, K)
        pointers = []
        for t in range(1, T):
            best, idx = (score[..., :, None] + self.transitions).max(dim=-2)
            real = mask[:, t, None, None]
            score = torch.where(real, best + emissions[:, :, t], score)
            # An identity pointer carries the last real tag through padding unchanged.
            pointers.append(torch.where(real, idx, identity))
        last = (score + self.end).argmax(dim=-1)
        path = [last]
        for idx in reversed(pointers):
            last = idx.gather(-1, last[..., None]).squeeze(-1)
            path.append(last)
        tags = torch.stack(path[::-1], dim=-1).masked_fill(~mask[:, None, :], 0)
        return self._unpack(tags, perm)

    # -- internals on packed (real tokens first) sequences --------------------------------

    def _pack(self, emissions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # A stable sort moves the real tokens to the front in order, so the recursions only
        # ever see right padding.
        mask = mask.bool()
        perm = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
        B, C, T, K = emissions.shape
        emissions = emissions.float().gather(2, perm[:, None, :, None].expand(B, C, T, K))
        return emissions, mask.gather(1, perm), perm

    @staticmethod
    def _unpack(packed: Tensor, perm: Tensor) -> Tensor:
        inverse = perm.argsort(dim=1)
        index = inverse[:, None, :] if packed.dim() == 3 else inverse[:, None, :, None]
        return packed.gather(2, index.expand_as(packed))

    def _forward_alphas(self, emissions: Tensor, mask: Tensor) -> Tensor:
        # alphas[:, :, t] = log-sum of all partial paths ending at t (emission at t included);
        # after the last real token it stays constant, so [:, :, -1] is the final one.
        alpha = self.start + emissions[:, :, 0]
        alphas = [alpha]
        for t in range(1, emissions.shape[2]):
            step = torch.logsumexp(alpha[..., :, None] + self.transitions, dim=-2) + emissions[:, :, t]
            alpha = torch.where(mask[:, t, None, None], step, alpha)
            alphas.append(alpha)
        return torch.stack(alphas, dim=2)

    def _backward_betas(self, emissions: Tensor, mask: Tensor) -> Tensor:
        # betas[:, :, t] = log-sum of all continuations after t; the last real token gets `end`.
        T = emissions.shape[2]
        beta = self.end.expand(emissions.shape[0], -1, -1)
        betas = [beta]
        for t in range(T - 2, -1, -1):
            step = torch.logsumexp(self.transitions + (emissions[:, :, t + 1] + beta)[..., None, :], dim=-1)
            beta = torch.where(mask[:, t + 1, None, None], step, self.end.expand_as(beta))
            betas.append(beta)
        return torch.stack(betas[::-1], dim=2)

    def _path_score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        B, C, T, K = emissions.shape
        first = tags[:, :, 0]
        score = self.start.expand(B, C, K).gather(-1, first[..., None]).squeeze(-1)
        score = score + emissions.gather(-1, tags[..., None]).squeeze(-1).mul(mask[:, None, :]).sum(-1)
        if T > 1:
            pair = tags[:, :, :-1] * K + tags[:, :, 1:]
            trans = self.transitions.reshape(1, C, K * K).expand(B, C, K * K).gather(-1, pair)
            score = score + (trans * mask[:, None, 1:]).sum(-1)
        last_index = (mask.sum(1) - 1).clamp(min=0)
        last = tags.gather(2, last_index[:, None, None].expand(B, C, 1)).squeeze(-1)
        return score + self.end.expand(B, C, K).gather(-1, last[..., None]).squeeze(-1)
