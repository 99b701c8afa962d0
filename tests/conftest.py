"""Shared pytest configuration and fixtures."""

import os
import tempfile

# Tests never reach the Hugging Face hub: without this, a miss waits ~25 s on the client's retries.
# Set before transformers is imported, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Reader training keeps upstream traces under ~/.cache by default: tests keep theirs in a temporary folder.
os.environ.setdefault("DIFFMAS_TRACE_DIR", tempfile.mkdtemp(prefix="diffmas-traces-"))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "real_model: loads a real offline model (needs its PyPI packages; about 60 s the first "
        "time, a few seconds once de-quantised into the cache); deselect with -m 'not real_model'",
    )


@pytest.fixture(scope="module")
def one_thread():
    """Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``. Tiny tensors gain nothing
    from intra-op threads, and with other work on the machine two threads contending for two busy
    cores made a backward pass ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_qwen):
    """The tiny qwen2 model saved as a local model directory (what ``--model DIR`` reads)."""
    path = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = tiny_qwen
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
