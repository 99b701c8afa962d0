"""Reading a given continuation on top of a method's context: the training loss and likelihoods.

Training (:mod:`diffmas.train.objective`) teacher-forces a reference answer on the answering
agent's context and takes its cross-entropy; :meth:`Method.score <diffmas.methods.base.Method.score>`
(and through it lm-eval's ``loglikelihood`` requests) reads the same way and reports each
continuation's summed log-probability and whether greedy decoding would have written it. One
forward pass serves both, so a likelihood and a training loss of the same text agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.kv_trace import SharedKVCache


def target_logits(
    lm: LM, cache: SharedKVCache, agent: str, last_hidden: torch.Tensor, targets: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``agent`` reads ``targets`` on top of ``cache``; returns the (N, V) logits of the N target
    tokens, their (N,) labels and the (B, W) bool mask that places them in the batch.

    ``last_hidden`` (B, d) is the hidden state of the last token before the targets; it predicts
    each target's first token. Targets are right-padded to width W: input column i holds target
    token i (B, W-1 columns in all) and is real only if token i+1 exists, so pads are masked out
    as keys and their outputs are never read. The output head runs on target positions only.
    """
    if any(len(t) == 0 for t in targets):
        raise DiffMASError("every target needs at least one token")
    width = max(len(t) for t in targets)
    labels = torch.full((len(targets), width), -100, dtype=torch.long)
    for b, t in enumerate(targets):
        labels[b, : len(t)] = torch.tensor(t, dtype=torch.long)
    mask = labels >= 0  # (B, W)
    states = [last_hidden[:, None, :]]  # states[:, i] predicts target token i
    if width > 1:
        new_real = mask[:, 1:].long()  # (B, W-1)
        inputs = torch.where(mask[:, :-1], labels[:, :-1], torch.full_like(labels[:, :-1], lm.pad_id))
        states.append(lm.forward_states(cache, agent, "text", new_real, input_ids=inputs.to(lm.device)))
    hidden = torch.cat(states, dim=1)  # (B, W, d)
    dev_mask = mask.to(hidden.device)
    return lm.logits(hidden[dev_mask]), labels.to(hidden.device)[dev_mask], dev_mask


def teacher_force(
    lm: LM, cache: SharedKVCache, agent: str, last_hidden: torch.Tensor, targets: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of ``targets`` read by ``agent`` on top of ``cache`` (see
    :func:`target_logits`): the (B, W) cross-entropy (0 at pads) and the (B, W) bool mask."""
    logits, labels, mask = target_logits(lm, cache, agent, last_hidden, targets)
    nll = F.cross_entropy(logits, labels, reduction="none")  # (N,)
    return torch.zeros(mask.shape, dtype=nll.dtype, device=nll.device).masked_scatter(mask, nll), mask


def continuation_scores(
    lm: LM, cache: SharedKVCache, agent: str, last_hidden: torch.Tensor, targets: list[list[int]]
) -> list[tuple[float, bool]]:
    """Per row: the summed log-probability of its target (float32 softmax) and whether each of its
    tokens is the model's most likely one (lm-eval's ``is_greedy``)."""
    logits, labels, mask = target_logits(lm, cache, agent, last_hidden, targets)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None])[:, 0]  # (N,)
    hit = logits.argmax(dim=-1) == labels  # (N,)
    row = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]  # (N,) row of each token
    sums = torch.zeros(mask.shape[0], dtype=torch.float32, device=logp.device).index_add_(0, row, logp)
    misses = torch.zeros(mask.shape[0], dtype=torch.long, device=logp.device).index_add_(0, row, (~hit).long())
    return [(float(s), int(m) == 0) for s, m in zip(sums.tolist(), misses.tolist())]
