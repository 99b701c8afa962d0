"""Methods: ways of answering questions with one model. One file each, one interface.

from diffmas.methods import SetupConfig
method = SetupConfig(method="latent_mas").build_method(lm, task)
"""

from __future__ import annotations

from diffmas.methods.base import AgentTrace, Method, MethodConfig, Trace
from diffmas.methods.diffmas import DiffMAS
from diffmas.methods.factory import METHODS, SetupConfig, build_method, get_method_class
from diffmas.methods.latent_mas import LatentMAS
from diffmas.methods.single import SingleAgent
from diffmas.methods.single_sft import SingleSFT
from diffmas.methods.text_mas import TextMAS

__all__ = [
    "METHODS",
    "AgentTrace",
    "DiffMAS",
    "LatentMAS",
    "Method",
    "MethodConfig",
    "SetupConfig",
    "SingleAgent",
    "SingleSFT",
    "TextMAS",
    "Trace",
    "build_method",
    "get_method_class",
]
