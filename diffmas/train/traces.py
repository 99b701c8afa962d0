"""Reader training's upstream traces, built once and kept on disk (the paper's stage I).

When no gradient reaches the upstream agents (``grad_through: none``, each agent its own adapter),
the part of the shared trace they write (their prompts and latent steps) is a function of the
example and of settings that never change during training. :class:`TraceStore` builds it once per
example, without gradients, keeps each row's real columns in a safetensors file, and rebuilds the
batch's trace from those files at every later step and epoch: a reader step then runs only the
final agent's prompt and the target, like a single-agent step.

A file's place on disk is keyed by everything that determines its contents:

* ``<root>/<settings digest>/``: the model (name, dtype, device type, a probe of its weights and
  the kernels it runs), the library versions, the system (agents, who sees whom), the latent
  steps of every upstream agent, the latent map (a hash of the realignment or communication map)
  and what each upstream adapter does (``AgentAdapters.fingerprint``). ``settings.json`` in the
  folder says which settings it holds.
* ``<example digest>.safetensors``: a hash of the upstream agents' prompt token ids, which holds
  the question, the prompts and the chat template.

Any change gives another folder, so a trace is never reused for other settings; each file also
repeats both digests, and a file that does not match or cannot be read is rebuilt.

The rebuilt trace has the layout of a fresh one (each segment left-padded to the batch's longest
row), so the final agent computes what it would on a trace built in the same batch. bfloat16 traces
built in other batches differ by rounding unless the model runs ``--batch-invariant``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from diffmas.adapters import AgentAdapters
from diffmas.checkpoint import model_signature
from diffmas.errors import DiffMASError
from diffmas.kv_trace import SharedKVCache
from diffmas.latent import SoftEmbedding
from diffmas.methods import LatentMAS
from diffmas.methods.base import AgentTrace, Context, per_row

FORMAT = 1
SETTINGS = "settings.json"


def default_trace_dir() -> Path:
    """``$DIFFMAS_TRACE_DIR``, else ``$XDG_CACHE_HOME/diffmas/traces``, else ``~/.cache/diffmas/traces``."""
    if env := os.environ.get("DIFFMAS_TRACE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "diffmas" / "traces"


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


def tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]


@dataclass
class StoredRow:
    """One example's upstream trace: its real columns, segment by segment."""

    segments: list[tuple[str, str, int]]  # (agent, kind, real columns of this row) in trace order
    keys: list[torch.Tensor]  # per layer (H, L, D), L = sum of the segments' lengths
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def rows_of(cache: SharedKVCache) -> list[StoredRow]:
    """Each row's real columns of ``cache`` (pads dropped), with its segments' lengths."""
    layers = cache.kv.layers if cache.segments else []  # no upstream agent: nothing is cached
    out = []
    for b in range(cache.batch_size):
        real = cache.real[b].bool()  # (L,)
        segments = [(s.agent, s.kind, int(real[s.start : s.end].sum())) for s in cache.segments]
        cols = real.nonzero().squeeze(1).to(layers[0].keys.device) if layers else None
        keys = [layer.keys[b].index_select(1, cols).contiguous() for layer in layers]
        values = [layer.values[b].index_select(1, cols).contiguous() for layer in layers]
        out.append(StoredRow(segments, keys, values))
    return out


def assemble(rows: list[StoredRow], new_cache) -> SharedKVCache:
    """The batch trace of ``rows``: each segment left-padded to its longest row, as a fresh build
    lays it out (``new_cache(batch)`` makes the empty trace). Pad columns hold zeros, masked out."""
    shape = [(agent, kind) for agent, kind, _ in rows[0].segments]
    if any([(a, k) for a, k, _ in row.segments] != shape for row in rows):
        raise DiffMASError("stored upstream traces of one batch have different segments; rebuild the trace cache")
    cache = new_cache(len(rows))
    device = cache.device
    offsets = [0] * len(rows)
    with torch.no_grad():
        for s, (agent, kind) in enumerate(shape):
            counts = [row.segments[s][2] for row in rows]
            width = max(counts)
            for i in range(len(rows[0].keys)):
                k0 = rows[0].keys[i]
                keys = k0.new_zeros(len(rows), k0.shape[0], width, k0.shape[-1])  # (B, H, width, D)
                values = keys.clone()
                for b, row in enumerate(rows):
                    n, at = counts[b], offsets[b]
                    keys[b, :, width - n :] = row.keys[i][:, at : at + n]
                    values[b, :, width - n :] = row.values[i][:, at : at + n]
                cache.kv.update(keys.to(device), values.to(device), i)
            real = torch.zeros(len(rows), width, dtype=torch.long)
            for b, n in enumerate(counts):
                real[b, width - n :] = 1
                offsets[b] += n
            cache.append(agent, kind, real)
    return cache


class TraceStore:
    """Upstream traces of ``method``'s examples under ``root`` (see the module docstring)."""

    def __init__(self, method: LatentMAS, root: str | os.PathLike, adapters: AgentAdapters | None, model: dict):
        if not method.lm.new_cache(1).mergeable:
            raise DiffMASError(
                "this model's cache keeps only a sliding window on some layers, so an upstream trace "
                "cannot be stored and rebuilt; train with --no-trace-cache"
            )
        self.method, self.adapters, self.root = method, adapters, Path(root).expanduser()
        lm = method.lm
        self.static = {
            "format": FORMAT,
            "model": {"name": lm.name, "dtype": str(lm.dtype), "device": lm.device.type, **model},
            "signature": model_signature(lm),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        self.built = self.reused = 0
        self.build_seconds = 0.0
        self.bytes_read = 0  # over every row handed out: their mean is the size per example

    # -- keys ------------------------------------------------------------------------------------
    def settings(self) -> dict:
        """Everything that determines a trace besides the example, as it stands now (the latent
        steps may follow a curriculum; the upstream adapters may have been trained by role steps)."""
        m = self.method
        system = m.system
        latent_map = m.latent_map
        weights = [getattr(latent_map, "weight", None), getattr(latent_map, "scale", None)]
        if weights[0] is None:
            weights = [getattr(latent_map, "matrix", None)]
        upstream = []
        for j, agent in enumerate(system.upstream):
            adapter = self.adapters.fingerprint(agent.name) if self.adapters is not None else "none"
            upstream.append({"agent": agent.name, "steps": m.steps_for(j), "sees": system.sees(j), "adapter": adapter})
        return {
            **self.static,
            "topology": system.topology,
            "upstream": upstream,
            "latent_map": [type(latent_map).__name__, getattr(latent_map, "target_norm", None)]
            + ([latent_map.temperature] if isinstance(latent_map, SoftEmbedding) else [])
            + [tensor_hash(w) if w is not None else None for w in weights],
        }

    def folder(self, settings: dict) -> Path:
        folder = self.root / digest(settings)
        if not (folder / SETTINGS).exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{SETTINGS}.{os.getpid()}"
            tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
            tmp.replace(folder / SETTINGS)
        return folder

    # -- files -----------------------------------------------------------------------------------
    def load(self, path: Path, expect: dict) -> StoredRow | None:
        """The row stored at ``path`` if its metadata matches ``expect``, else None (to be rebuilt)."""
        if not path.exists():
            return None
        try:
            with safe_open(path, "pt") as fh:
                meta = fh.metadata() or {}
                if any(meta.get(k) != v for k, v in expect.items()):
                    return None
                layers = int(meta["layers"])
                keys = [fh.get_tensor(f"k.{i}") for i in range(layers)]
                values = [fh.get_tensor(f"v.{i}") for i in range(layers)]
            return StoredRow([tuple(s) for s in json.loads(meta["segments"])], keys, values)
        except (OSError, SafetensorError, KeyError, ValueError):
            return None  # unreadable: rebuilt

    def save(self, path: Path, row: StoredRow, meta: dict) -> None:
        tensors = {f"k.{i}": k.cpu() for i, k in enumerate(row.keys)} | {
            f"v.{i}": v.cpu() for i, v in enumerate(row.values)
        }
        meta = meta | {"segments": json.dumps(row.segments), "layers": str(len(row.keys))}
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        save_file(tensors, tmp, metadata=meta)
        tmp.replace(path)

    # -- the context -------------------------------------------------------------------------------
    def context(
        self,
        questions: list[str],
        ids: list[str] | None = None,
        *,
        reserve: int | list[int] = 0,
        hide_from_final: torch.Tensor | None = None,
    ) -> Context:
        """What ``method.build_context(questions, ..., grad_last_k=0)`` returns, with the upstream
        trace read from disk where it was stored, else built (without gradients) and stored."""
        m = self.method
        n = len(m.system.agents)
        prompts = m.build_prompts(questions)  # prompts[j][b]
        reserve = per_row(reserve, len(questions))
        steps = [m.steps_for(j) for j in range(n - 1)]
        needed = [sum(len(p[b]) for p in prompts) + sum(steps) + reserve[b] for b in range(len(questions))]
        m.check_fits(ids, needed, "the shared trace (all prompts, latent steps and the answer)")
        settings = self.settings()
        folder, key = self.folder(settings), digest(settings)
        examples = [digest([prompts[j][b] for j in range(n - 1)]) for b in range(len(questions))]
        rows = [self.load(folder / f"{e}.safetensors", {"settings": key, "example": e}) for e in examples]
        missing = [b for b, row in enumerate(rows) if row is None]
        if missing:
            started = time.perf_counter()
            with torch.no_grad():
                cache, _ = m.run_upstream([[p[b] for b in missing] for p in prompts])
            for b, row in zip(missing, rows_of(cache)):
                self.save(folder / f"{examples[b]}.safetensors", row, {"settings": key, "example": examples[b]})
                rows[b] = row
            self.build_seconds += time.perf_counter() - started
            self.built += len(missing)
        self.reused += len(questions) - len(missing)
        self.bytes_read += sum(row.nbytes for row in rows)
        cache = assemble(rows, m.lm.new_cache)
        traces = [
            [
                AgentTrace(agent.name, agent.role, len(prompts[j][b]), latent_steps=steps[j])
                for j, agent in enumerate(m.system.upstream)
            ]
            for b in range(len(questions))
        ]
        return m.finish_context(cache, prompts[-1], traces, hide_from_final)

    def summary(self) -> dict:
        rows = self.built + self.reused
        mean = self.bytes_read / rows if rows else None
        return {
            "dir": str(self.root),
            "built": self.built,
            "reused": self.reused,
            "build_seconds": round(self.build_seconds, 2),
            "mb_per_example": round(mean / 2**20, 3) if mean is not None else None,
        }
