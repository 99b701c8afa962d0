"""Gradient checkpointing that keeps the shared KV cache intact.

transformers' own gradient checkpointing recomputes whole decoder layers in the backward pass
and therefore switches the KV cache off in training: a recomputed attention block would append
its keys and values to the cache a second time. The latent trace *is* that cache, so we
checkpoint only the feed-forward (MLP) block of every decoder layer. It never touches the cache,
and it is where most activation memory goes: per token it keeps the gate, up, activation and
product tensors of the intermediate width (4,864 for Qwen2.5-0.5B, against a hidden size of 896).
Attention blocks keep their activations.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffmas.errors import DiffMASError

_ORIGINAL = "_diffmas_forward"


def _decoder_mlps(model: nn.Module) -> list[nn.Module]:
    """The feed-forward block of every decoder layer: a child named ``mlp`` (Llama, Qwen, Gemma,
    Mistral, Phi...) or ``feed_forward``."""
    blocks = [
        m
        for name, m in model.named_modules()
        if name.rpartition(".")[2] in ("mlp", "feed_forward")
        and any(isinstance(c, nn.Linear) or hasattr(c, "base_layer") for c in m.children())
    ]
    if not blocks:
        raise DiffMASError(
            "found no feed-forward blocks (modules named `mlp`) to checkpoint in this model; "
            "train without --gradient-checkpointing"
        )
    return blocks


def _checkpointed(module: nn.Module, original, *args, **kwargs):
    # Recompute only when a backward pass will need the activations; evaluation and no-grad
    # passes (frozen parts of the trace) run the block as usual.
    if module.training and torch.is_grad_enabled():
        return checkpoint(original, *args, use_reentrant=False, **kwargs)
    return original(*args, **kwargs)


def enable_mlp_checkpointing(model: nn.Module, adapters: int = 1) -> int:
    """Recompute every decoder MLP in the backward pass; returns the number of blocks wrapped.

    ``adapters``: the number of LoRA adapters switched per agent. Recomputation happens after
    the forward pass, when a different agent's adapter may be active, so LoRA layers inside the
    MLP blocks are only allowed with a single (shared) adapter.
    """
    blocks = _decoder_mlps(model)
    if adapters > 1 and any(hasattr(c, "lora_A") for b in blocks for c in b.modules()):
        raise DiffMASError(
            "gradient checkpointing recomputes the MLP blocks after other agents' adapters have "
            "become active, so it cannot be combined with per-agent LoRA on MLP layers: "
            "use --shared-adapter, attention-only --lora-targets, or no checkpointing"
        )
    for block in blocks:
        if not hasattr(block, _ORIGINAL):
            setattr(block, _ORIGINAL, block.forward)
            block.forward = functools.partial(_checkpointed, block, block.forward)
    return len(blocks)


def disable_mlp_checkpointing(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, _ORIGINAL):
            module.forward = getattr(module, _ORIGINAL)
            delattr(module, _ORIGINAL)
