"""Writing checkpoints of training runs (the format and its reader: :mod:`diffmas.checkpoint`).

A checkpoint is written into a staging directory next to its final place and renamed into place,
so a crash never leaves a half-written checkpoint under a real name.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from diffmas.adapters import AgentAdapters
from diffmas.agents import SystemSpec
from diffmas.checkpoint import (
    ADAPTERS,
    COMM,
    FORMAT,
    MANIFEST,
    STAGING_PREFIX,
    STATE,
    STEP_PREFIX,
    VERSION,
    hub_id_of,
    model_signature,
    read_manifest,
    sha256,
)
from diffmas.engine import LM

LOG = "log.jsonl"  # the run's log, one line per step, beside its checkpoints


def staging_dir(dest: Path) -> Path:
    return dest.parent / f"{STAGING_PREFIX}{dest.name}"


def begin(dest: Path) -> Path:
    """A fresh, empty staging directory for ``dest``."""
    tmp = staging_dir(dest)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_payload(
    tmp: Path, manifest: dict, adapters: AgentAdapters, comm: torch.nn.Module | None, state: dict | None, config: dict
) -> None:
    """Fill a staging directory; the manifest goes last."""
    from safetensors.torch import save_file

    adapters.peft_model.save_pretrained(str(tmp / ADAPTERS))
    name_base_model(tmp / ADAPTERS, manifest)
    if comm is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in comm.state_dict().items()}, str(tmp / COMM))
    if state is not None:
        torch.save(state, tmp / STATE)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    write_manifest(tmp, manifest)


def write_manifest(folder: Path, manifest: dict) -> None:
    """``manifest`` with every file's size and hash, written last: a checkpoint damaged after it
    was written (a truncated copy, a bad disk) is detected on resume and skipped for the previous one."""
    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    (folder / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=2))


def name_base_model(adapters_dir: Path, manifest: dict) -> None:
    """Point each adapter_config.json at the base model by its Hugging Face id (PEFT writes the
    path the weights were loaded from: here a local de-quantised copy no one else has)."""
    base = manifest.get("base_model_hub_id") or manifest.get("base_model")
    for config in sorted(adapters_dir.glob("*/adapter_config.json")):
        data = json.loads(config.read_text())
        data["base_model_name_or_path"] = base
        config.write_text(json.dumps(data, indent=2, sort_keys=True))


def commit(tmp: Path, dest: Path) -> None:
    """Move a finished staging directory to ``dest`` (replacing an older one of that name)."""
    old = dest.parent / f"{STAGING_PREFIX}old-{dest.name}"
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def manifest_of(
    adapters: AgentAdapters,
    lm: LM,
    *,
    method: str,
    step: int,
    system: SystemSpec | None,
    comm: bool,
    realign: bool,
    latent_steps: int,
    task: str,
    repeat_question: bool = False,
    latent_input: str = "hidden",
    soft_temperature: float = 1.0,
) -> dict:
    first = adapters.adapter_names[0]
    targets = adapters.peft_model.peft_config[first].target_modules
    lora = {**asdict(adapters.settings), "target_modules": sorted(targets)}
    return {
        "format": FORMAT,
        "version": VERSION,
        "method": method,
        "step": step,
        "base_model": lm.name,
        # Where the weights come from for a user elsewhere (adapter_config.json names it too),
        # and the local copy they were loaded from here (offline use on this machine).
        "base_model_hub_id": hub_id_of(lm.name),
        "base_model_local_path": str(getattr(lm.model.config, "name_or_path", "") or "") or None,
        "base_signature": model_signature(lm),
        "agents": list(adapters.names),
        "adapters": dict(adapters.names),
        "system": asdict(system) if system is not None else None,
        "lora": lora,
        "comm_adapter": comm,
        "realign": realign,
        "latent_input": latent_input,
        "soft_temperature": soft_temperature,
        "latent_steps": latent_steps,
        "task": task,
        "repeat_question": repeat_question,
    }


def clean(out: Path, keep: int) -> None:
    """Remove staging leftovers of interrupted writes, incomplete step directories and all but
    the ``keep`` most recent step checkpoints (0: keep all)."""
    root = out / "checkpoints"
    for parent in (root, out):
        for leftover in parent.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    steps = []
    for path in sorted(root.glob(f"{STEP_PREFIX}*")):
        if read_manifest(path) is None:
            shutil.rmtree(path, ignore_errors=True)
        else:
            steps.append(path)
    if keep:
        for path in steps[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
