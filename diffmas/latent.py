"""Latent steps: feeding an agent's last hidden state back as its next input embedding.

The last layer's hidden state h lives in the output space of the model (it is what the output head
reads), and its norm is far larger than that of a token embedding. Before feeding it back we map it
into the input-embedding space with the ridge least-squares *realignment* of LatentMAS,

    W_a = solve(W_out^T W_out + lambda I, W_out^T W_in)        (d x d, computed in float32)

so that ``h @ W_a`` approximates the input embedding of the token that h would predict, and then
rescale every vector to the mean L2 norm of the input-embedding rows (that rescaling matters even
with realignment switched off).

:class:`SoftEmbedding` is the other choice (``latent_input: soft``): the next input is the input
embedding expected under the next-token distribution that h predicts, softmax(h W_out^T / T) W_in,
so every latent vector is a convex combination of token embeddings, inside the region the model
was trained to read; T -> 0 tends to the greedy token's embedding.

:class:`CommAdapter` is the trainable version of that map (DiffMAS's communication encoder): it
starts as the realignment and learns from there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.kernels.rows import at_least_rows

LATENT_INPUTS = ("hidden", "soft")


def _input_embedding_scale(lm: LM) -> float:
    # Gemma-style models multiply looked-up embeddings by a constant; inputs_embeds bypass that,
    # so latent vectors must be produced already scaled.
    scale = getattr(lm.model.get_input_embeddings(), "embed_scale", 1.0)
    return float(scale.item() if torch.is_tensor(scale) else scale)


class Realigner:
    """Maps (B, d) last-layer hidden states to (B, 1, d) input embeddings for the next step."""

    def __init__(self, lm: LM, realign: bool = True, ridge: float = 1e-5):
        w_in = lm.model.get_input_embeddings().weight.detach().float()  # (V, d)
        w_out = lm.head.weight.detach().float()  # (V, d)
        self.realign = realign
        self.dtype = lm.dtype
        self.target_norm = float(w_in.norm(dim=1).mean()) * _input_embedding_scale(lm)
        self.matrix: torch.Tensor | None = None
        if realign:
            d = w_out.shape[1]
            gram = w_out.T @ w_out + ridge * torch.eye(d, device=w_out.device)
            self.matrix = torch.linalg.solve(gram, w_out.T @ w_in)  # (d, d)

    @classmethod
    def for_lm(cls, lm: LM, realign: bool = True) -> Realigner:
        """The realigner of ``lm``, solved once per model (it reads the whole vocabulary)."""
        cached = lm.__dict__.setdefault("_realigners", {})
        if realign not in cached:
            cached[realign] = cls(lm, realign=realign)
        return cached[realign]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        if self.matrix is not None:
            # At least MIN_ROWS rows: float32 products of fewer take another kernel path, so a
            # batch of one would round differently from a batch of 16 (diffmas.kernels.exact).
            x = at_least_rows(lambda rows: rows @ self.matrix, x)
        x = x * (self.target_norm / x.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return x.to(self.dtype).unsqueeze(1)


class SoftEmbedding:
    """Maps (B, d) last-layer hidden states to the (B, 1, d) expected input embedding of the token
    they predict: the next-token probabilities at ``temperature`` times the embedding matrix."""

    def __init__(self, lm: LM, temperature: float = 1.0):
        if not temperature > 0:
            raise DiffMASError(f"the soft latent input's temperature must be positive, got {temperature}")
        self.lm = lm
        self.temperature = float(temperature)
        self.dtype = lm.dtype
        self.scale = _input_embedding_scale(lm)

    @classmethod
    def for_lm(cls, lm: LM, temperature: float = 1.0) -> SoftEmbedding:
        cached = lm.__dict__.setdefault("_soft_embeddings", {})
        if temperature not in cached:
            cached[temperature] = cls(lm, temperature)
        return cached[temperature]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        w_in = self.lm.model.get_input_embeddings().weight  # (V, d), the model's dtype: no copy
        # Both products on at least MIN_ROWS rows, as in Realigner: the same rounding whatever the
        # batch size.
        logits = at_least_rows(self.lm.logits, hidden)  # (B, V) float32
        probs = torch.softmax(logits / self.temperature, dim=-1)
        x = at_least_rows(lambda rows: rows @ w_in, probs.to(w_in.dtype)) * self.scale
        return x.to(self.dtype).unsqueeze(1)


def latent_map_for(
    lm: LM, latent_input: str | None = "hidden", realign: bool = True, temperature: float | None = 1.0
) -> LatentMap:
    """The fixed (untrained) latent map of these settings (None: the defaults, hidden and 1)."""
    latent_input = latent_input or "hidden"
    if latent_input == "soft":
        return SoftEmbedding.for_lm(lm, 1.0 if temperature is None else temperature)
    if latent_input != "hidden":
        raise DiffMASError(f"latent_input must be one of {LATENT_INPUTS}, got {latent_input!r}")
    return Realigner.for_lm(lm, realign)


class CommAdapter(nn.Module):
    """A trainable hidden-state -> latent-input map, initialised to a :class:`Realigner`.

    ``x = h @ W``, rescaled to the input-embedding norm times a learned ``scale``. At
    initialisation ``W`` is the realignment matrix (the identity when realignment is off) and
    ``scale`` is 1, which reproduces the realigner bit for bit, so a freshly built DiffMAS system
    behaves exactly like LatentMAS. The parameters stay float32 whatever the model's dtype (the
    realignment is solved in float32 too); only the output is cast to the model's dtype.
    """

    def __init__(self, realigner: Realigner, hidden_size: int):
        super().__init__()
        init = realigner.matrix if realigner.matrix is not None else torch.eye(hidden_size)
        self.weight = nn.Parameter(init.detach().clone().float())  # (d, d)
        self.scale = nn.Parameter(torch.ones((), device=init.device))
        self.target_norm = realigner.target_norm  # a float, exactly as the realigner uses it
        self.dtype = realigner.dtype

    @classmethod
    def from_lm(cls, lm: LM, realign: bool = True) -> CommAdapter:
        return cls(Realigner.for_lm(lm, realign), lm.head.weight.shape[1])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, d) last-layer hidden states -> (B, 1, d) input embeddings, like a Realigner."""
        x = at_least_rows(lambda rows: rows @ self.weight, hidden.float())  # as in Realigner
        # Same operations in the same order as Realigner.__call__ (scale == 1 is exact), then scale.
        x = x * (self.target_norm / x.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        x = x * self.scale
        return x.to(self.dtype).unsqueeze(1)


LatentMap = Callable[[torch.Tensor], torch.Tensor]  # (B, d) hidden -> (B, 1, d) next input embedding


def run_latent_steps(
    lm: LM,
    cache,
    agent: str,
    hidden: torch.Tensor,
    steps: int,
    realigner: LatentMap,
    readout_k: int = 0,
) -> tuple[torch.Tensor, list[list[list[str]]]]:
    """Run ``steps`` latent steps for ``agent`` starting from its (B, d) last hidden state.

    ``realigner`` maps each hidden state to the next input: a :class:`Realigner` or a trainable
    :class:`CommAdapter`.

    Returns the last hidden state and, if ``readout_k > 0``, a logit-lens readout of every latent
    vector passed: readouts[b][i] is the top-k tokens of step i for row b. The readout applies the
    output head and is for display only; evaluation leaves it off.
    """
    batch = hidden.shape[0]
    readouts: list[list[list[str]]] = [[] for _ in range(batch)]
    ones = torch.ones(batch, 1, dtype=torch.long)
    for _ in range(steps):
        if readout_k:
            top = lm.logits(hidden).topk(readout_k, dim=-1).indices.tolist()
            for b in range(batch):
                readouts[b].append([lm.tokenizer.decode([t]) for t in top[b]])
        hidden = lm.forward(cache, agent, "latent", ones, inputs_embeds=realigner(hidden))
    return hidden, readouts
