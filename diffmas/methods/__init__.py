"""Methods: ways of answering questions with one model. One file each, one interface."""

from __future__ import annotations

from diffmas.errors import UnknownNameError
from diffmas.methods.base import AgentTrace, Method, MethodConfig, Trace
from diffmas.methods.diffmas import DiffMAS
from diffmas.methods.latent_mas import LatentMAS
from diffmas.methods.single import SingleAgent
from diffmas.methods.single_sft import SingleSFT
from diffmas.methods.text_mas import TextMAS

METHODS: dict[str, type[Method]] = {m.name: m for m in (SingleAgent, TextMAS, LatentMAS, DiffMAS, SingleSFT)}


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UnknownNameError("method", name, list(METHODS))
    return METHODS[name]


__all__ = ["METHODS", "AgentTrace", "DiffMAS", "LatentMAS", "Method", "MethodConfig", "SingleAgent", "SingleSFT",
           "TextMAS", "Trace", "get_method_class"]
