"""Models: the offline registry, loading any Hugging Face causal LM, and tiny test models.

from diffmas.models import load_model
model, tokenizer = load_model("qwen2.5-coder-0.5b-instruct")  # or a local dir, or a hub id
"""

from diffmas.models.loading import (
    ModelStatus,
    install_model,
    list_models,
    load_model,
    prepare_tokenizer,
    resolve_dtype,
    stop_token_ids,
)
from diffmas.models.registry import DEFAULT_MODEL, OFFLINE_MODELS, GGUFPart, OfflineModel
from diffmas.models.store import default_cache_dir, is_cached
from diffmas.models.tiny import build_tiny_model, build_tiny_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "GGUFPart",
    "OFFLINE_MODELS",
    "ModelStatus",
    "OfflineModel",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "default_cache_dir",
    "install_model",
    "is_cached",
    "list_models",
    "load_model",
    "prepare_tokenizer",
    "resolve_dtype",
    "stop_token_ids",
]
