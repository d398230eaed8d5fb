"""Token sampling from a batch of logits: greedy, temperature, top-k, top-p, per-request seeds.

Random draws use the exponential race (argmax of p_i / E_i with E_i ~ Exp(1) picks i with
probability p_i): a seeded request draws its E from its own generator, so its tokens do not depend
on what else is in the batch.
"""
from __future__ import annotations

import torch

from engines.reference.sequence import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           default_generator: torch.Generator | None = None) -> torch.Tensor:
    """logits: [batch, vocab] float32 (modified in place). Returns [batch] int64 token ids."""
    greedy = [p.greedy for p in params]
    if all(greedy):
        return _argmax(logits)
    device, vocab = logits.device, logits.shape[1]
    argmax = _argmax(logits) if any(greedy) else None
    temps = torch.tensor([1.0 if g else p.temperature for p, g in zip(params, greedy)],
                         dtype=torch.float32, device=device)
    logits.div_(temps[:, None])

    if any(0 < p.top_k < vocab for p in params):
        ks = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
        kth = logits.topk(int(ks.max()), dim=-1).values.gather(1, (ks - 1)[:, None])
        logits.masked_fill_(logits < kth, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the more likely ones already reach top_p (the top token always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
        sorted_logits.masked_fill_(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)

    probs = logits.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_(generator=default_generator)
    for i, g in enumerate(generators):
        if g is not None:
            noise[i].exponential_(generator=g)
    tokens = probs.div_(noise).argmax(dim=-1)
    if argmax is not None:
        tokens = torch.where(torch.tensor(greedy, device=device), argmax, tokens)
    return tokens


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    # On the CPU numpy's argmax is ~10x faster than torch's for [batch, vocab] float32 (a
    # vectorized scan vs a generic reduction); same result, first index among equal maxima.
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(logits.numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)
