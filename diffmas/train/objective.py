"""The end-to-end objective: cross-entropy of a reference answer, teacher-forced on a method's context.

The context is built by the method's :meth:`~diffmas.methods.base.Method.build_context`, the same
forward pass inference uses, with gradients on: for ``diffmas`` the latent trace of
:class:`~diffmas.methods.latent_mas.LatentMAS`, for its control ``single_sft`` the single agent's
prompt. The final agent then reads the reference solution (e.g. ending in ``\\boxed{42}``)
token by token on top of the whole trace, and the loss is the cross-entropy of those tokens only.
Its gradient reaches the final agent's adapter directly and the upstream agents' adapters (and
the communication adapter) through the KV entries the final agent attends to.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.methods import Method, TextMAS
from diffmas.methods.scoring import teacher_force

if TYPE_CHECKING:
    from diffmas.train.traces import TraceStore

GRAD_THROUGH = ("none", "full", "last_k")


@dataclass
class ObjectiveConfig:
    # How far gradients reach into the upstream trace: "none" (only the final agent learns),
    # "full" (every upstream step), "last_k" (each upstream agent's last ``last_k`` latent steps).
    grad_through: str = "full"
    last_k: int = 1
    # Probability, per row and upstream agent, of hiding that agent's segments from the final agent.
    comm_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.grad_through not in GRAD_THROUGH:
            raise DiffMASError(f"grad_through must be one of {GRAD_THROUGH}, got {self.grad_through!r}")
        if self.grad_through == "last_k" and self.last_k < 1:
            raise DiffMASError(f"last_k must be at least 1, got {self.last_k}")
        if not 0 <= self.comm_dropout <= 1:
            raise DiffMASError(f"comm_dropout must be in [0, 1], got {self.comm_dropout}")

    @property
    def grad_last_k(self) -> int | None:
        """The ``grad_last_k`` argument of :meth:`LatentMAS.build_context <diffmas.methods.latent_mas.LatentMAS.build_context>`."""
        return {"none": 0, "full": None, "last_k": self.last_k}[self.grad_through]


@dataclass
class TrajectoryLoss:
    loss: torch.Tensor  # scalar: mean cross-entropy over all target tokens of the batch
    per_example: torch.Tensor  # (B,) mean cross-entropy over each row's own target tokens
    tokens: torch.Tensor  # (B,) number of target tokens per row


_END_OF_TURN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # LM -> its end-of-turn id


def end_of_turn_id(lm: LM) -> int:
    """The token that closes an assistant turn in ``lm``'s chat template (<|im_end|> for ChatML),
    else the first stop token. Found once per model (every target ends with it)."""
    if lm not in _END_OF_TURN:
        _END_OF_TURN[lm] = _find_end_of_turn(lm)
    return _END_OF_TURN[lm]


def _find_end_of_turn(lm: LM) -> int:
    stops = set(lm.stop_ids.tolist())
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        marker = "DIFFMAS_END_MARKER"
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
        text = tok.apply_chat_template(messages, tokenize=False)
        tail = text[text.rfind(marker) + len(marker) :]
        for t in tok(tail, add_special_tokens=False)["input_ids"]:
            if t in stops:
                return int(t)
    return int(lm.stop_ids[0])


def target_ids(lm: LM, text: str, close_turn: bool = True) -> list[int]:
    """Token ids of a reference answer, followed by the end-of-turn token so that the final agent
    also learns where to stop."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids) + ([end_of_turn_id(lm)] if close_turn else [])


def trajectory_loss(
    method: Method,
    questions: list[str],
    targets: list[str] | list[list[int]],
    config: ObjectiveConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    traces: TraceStore | None = None,
) -> TrajectoryLoss:
    """Build ``method``'s context of ``questions`` and score the answering agent's ``targets`` on it.

    ``targets`` are reference answers as text (tokenised with :func:`target_ids`) or as token ids.
    The same target tokens, :func:`teacher_force` and reduction serve every method, so a trained
    multi-agent system and its single-agent control differ only in their context. Gradients are
    not switched on here: call it with grad enabled to train, under ``no_grad`` to evaluate.
    ``generator`` draws the communication-dropout masks (methods with upstream agents).
    ``traces``: a :class:`~diffmas.train.traces.TraceStore` of ``method``'s upstream traces, read
    instead of built (reader training: no gradient reaches the upstream agents).
    """
    config = config or ObjectiveConfig()
    lm = method.lm
    if len(targets) != len(questions):
        raise DiffMASError(f"got {len(targets)} targets for {len(questions)} questions")
    ids = [target_ids(lm, t) if isinstance(t, str) else list(t) for t in targets]
    upstream = method.system.upstream if method.system is not None else []
    hide = None
    if config.comm_dropout > 0 and upstream:
        hide = torch.rand((len(questions), len(upstream)), generator=generator) < config.comm_dropout
    reserve = [len(t) for t in ids]
    if traces is not None:
        if config.grad_last_k != 0:
            raise DiffMASError("stored upstream traces carry no gradient: they need grad_through none")
        ctx = traces.context(questions, reserve=reserve, hide_from_final=hide)
    else:
        grad_last_k = config.grad_last_k if upstream else None
        ctx = method.build_context(
            questions, reserve=reserve, reserve_what="the target", grad_last_k=grad_last_k, hide_from_final=hide
        )
    per_token, mask = teacher_force(lm, ctx.cache, ctx.agent, ctx.last_hidden, ids)
    tokens = mask.sum(dim=1)
    return TrajectoryLoss(per_token.sum() / tokens.sum(), per_token.sum(dim=1) / tokens, tokens)


def role_loss(text_method: TextMAS, questions: list[str], texts: list[list[str]]) -> TrajectoryLoss:
    """Stage one of the two-stage schedule: every agent learns its own role from a teacher trajectory.

    ``texts[b][j]`` is what agent j wrote for question b in a kept `diffmas collect` trajectory.
    Agent j reads its text-MAS prompt (the question and the texts of the agents it sees) and its
    own text is teacher-forced with its own adapter; the loss averages over every agent's tokens.
    """
    lm, system = text_method.lm, text_method.system
    n = len(system.agents)
    if len(texts) != len(questions) or any(len(row) != n for row in texts):
        raise DiffMASError(f"role_loss needs one text per agent ({n}) for each of the {len(questions)} questions")
    total = torch.zeros((), device=lm.device)
    per_row = torch.zeros(len(questions), device=lm.device)
    tokens = torch.zeros(len(questions), dtype=torch.long, device=lm.device)
    for j, agent in enumerate(system.agents):
        prompts = [text_method.prompt_ids(j, q, row) for q, row in zip(questions, texts)]
        ids = [target_ids(lm, row[j]) for row in texts]
        cache, hidden = text_method.prefill_prompts(
            agent.name, prompts, None, [len(t) for t in ids], f"agent {agent.name}'s prompt plus its trajectory text"
        )
        per_token, mask = teacher_force(lm, cache, agent.name, hidden, ids)
        total = total + per_token.sum()
        per_row = per_row + per_token.sum(dim=1)
        tokens = tokens + mask.sum(dim=1)
    return TrajectoryLoss(total / tokens.sum(), per_row / tokens, tokens)
