"""The checkpoint format of training runs, read: finding, verifying and opening checkpoints.

A checkpoint is a directory::

    manifest.json        written last: a directory without it is an interrupted write, ignored
    config.json          the run's TrainConfig
    adapters/<name>/     PEFT format (adapter_config.json + adapter_model.safetensors), one per adapter
    comm.safetensors     the communication adapter, when one is trained
    trainer_state.pt     optimizer, scheduler, step, data position, RNG states (resuming only)

A run directory holds ``checkpoints/step-NNNNNNN/`` (the latest few) and ``final/``. Checkpoints
are written by :mod:`diffmas.train.saving`; this module, which both inference
(:mod:`diffmas.methods`) and training read, sits below both.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from diffmas.adapters import AgentAdapters, LoraSettings
from diffmas.agents import SystemSpec, system_from_dict
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.latent import CommAdapter
from diffmas.models.registry import get_offline_model

MANIFEST = "manifest.json"
FORMAT = "diffmas-checkpoint"
VERSION = 1
STATE = "trainer_state.pt"
COMM = "comm.safetensors"
ADAPTERS = "adapters"
STEP_PREFIX = "step-"
STAGING_PREFIX = ".tmp-"


def model_signature(lm: LM) -> dict:
    """What identifies a base model: its shape and a probe of its input embeddings (compared with
    a tolerance, so the same weights in bfloat16 and float32 match)."""
    config = lm.model.config.get_text_config()
    weight = lm.model.get_input_embeddings().weight
    return {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": int(weight.shape[1]),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": int(weight.shape[0]),
        "probe": weight[:4, :8].detach().float().cpu().flatten().tolist(),
    }


def same_model(a: dict, b: dict) -> bool:
    if any(a.get(k) != b.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")):
        return False
    pa, pb = torch.tensor(a["probe"]), torch.tensor(b["probe"])
    return pa.shape == pb.shape and bool(torch.allclose(pa, pb, rtol=2e-2, atol=1e-4))


def describe_signature(sig: dict) -> str:
    return (
        f"{sig.get('model_type')}, {sig.get('num_hidden_layers')} layers, hidden {sig.get('hidden_size')}, "
        f"vocab {sig.get('vocab_size')}"
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(path: Path) -> str | None:
    """Why checkpoint ``path`` cannot be trusted (a file missing, cut short or changed), or None."""
    manifest = read_manifest(path)
    if manifest is None:
        return f"{MANIFEST} missing, unreadable or incomplete"
    files = manifest.get("files")
    if not isinstance(files, dict):  # written before hashes were recorded: nothing to check
        return None
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, {expected['bytes']} were written"
        if sha256(file) != expected["sha256"]:
            return f"{name} does not match its recorded hash"
    return None


def weights_digest(path: str | Path) -> str | None:
    """One hash of the trained weights a checkpoint or export holds (its safetensors files, as its
    manifest records them), whatever its folder or file names; None where no hashes were recorded."""
    manifest = read_manifest(resolve(path))
    files = (manifest or {}).get("files")
    if not isinstance(files, dict):
        return None
    hashes = sorted(v["sha256"] for k, v in files.items() if k.endswith(".safetensors"))
    return hashlib.sha256("".join(hashes).encode()).hexdigest()[:16] if hashes else None


def read_manifest(path: Path) -> dict | None:
    """The manifest of a complete checkpoint directory, else None (also for a manifest that
    lacks what every checkpoint records: its format and step)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not (isinstance(data, dict) and data.get("format") == FORMAT):
        return None
    step = data.get("step")
    return data if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{STEP_PREFIX}{step:07d}"


def complete_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint of a run (step checkpoints and final/), by step."""
    candidates = sorted((out / "checkpoints").glob(f"{STEP_PREFIX}*")) + [out / "final"]
    found = []
    for path in candidates:
        manifest = read_manifest(path) if path.is_dir() else None
        if manifest is not None:
            found.append((int(manifest["step"]), path))
    return sorted(found, key=lambda sp: (sp[0], sp[1].name == "final"))


def latest_checkpoint(out: Path, verify: bool = False) -> Path | None:
    """The newest complete checkpoint of a run. ``verify``: check its files against the recorded
    hashes and fall back to the previous checkpoint, with a warning, when they do not match."""
    for _, path in reversed(complete_checkpoints(out)):
        problem = damage(path) if verify else None
        if problem is None:
            return path
        warnings.warn(f"checkpoint {path} is damaged ({problem}); falling back to the previous one", stacklevel=2)
    return None


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from what a user names: the checkpoint itself, or a run directory
    (its final/, else its latest step checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise DiffMASError(f"adapter directory {path} does not exist")
    if read_manifest(path) is not None:
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise DiffMASError(
            f"{path} holds no complete DiffMAS checkpoint ({MANIFEST} missing or incomplete: not a "
            "training run's final/ or checkpoint directory, or an interrupted write)"
        )
    return latest


def load_adapter_weights(adapters: AgentAdapters, path: Path) -> None:
    """Copy saved LoRA weights into existing adapters, in place (optimizers keep their params)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for name in adapters.adapter_names:
        file = path / ADAPTERS / name / "adapter_model.safetensors"
        if not file.is_file():
            raise DiffMASError(f"checkpoint {path} has no weights for adapter {name!r} ({file} missing)")
        result = set_peft_model_state_dict(adapters.peft_model, load_file(str(file)), adapter_name=name)
        if result.unexpected_keys:
            raise DiffMASError(
                f"checkpoint {path}: adapter {name!r} has weights this model cannot take, e.g. "
                f"{result.unexpected_keys[0]}"
            )


def load_comm_weights(comm: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    device = next(comm.parameters()).device
    comm.load_state_dict({k: v.to(device) for k, v in load_file(str(path / COMM)).items()})


class TrainedCheckpoint:
    """A finished (or intermediate) training checkpoint, opened for inference."""

    def __init__(self, path: str | Path):
        self.path = resolve(path)
        problem = damage(self.path)  # a truncated or changed file must not load, or load silently
        if problem is not None:
            raise DiffMASError(
                f"adapter checkpoint {self.path} is damaged: {problem}; copy it again from where it "
                "came from, or evaluate another checkpoint of the run"
            )
        self.manifest = read_manifest(self.path)  # type: ignore[assignment]

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def system(self) -> SystemSpec | None:
        data = self.manifest.get("system")
        return system_from_dict(data, where=f"{self.path}/{MANIFEST}") if data else None

    def check(self, lm: LM, method: str, agents: list[str]) -> None:
        """Refuse an adapter trained for another method, base model or agent layout."""
        m = self.manifest
        if m["method"] != method:
            raise DiffMASError(
                f"{self.path} was trained with method {m['method']!r}, not {method!r}; evaluate it "
                f"with --method {m['method']}"
            )
        here = model_signature(lm)
        if not same_model(m["base_signature"], here):
            raise DiffMASError(
                f"adapter {self.path} was trained on base model {m['base_model']!r} "
                f"({describe_signature(m['base_signature'])}) but the model loaded is {lm.name!r} "
                f"({describe_signature(here)}); pass --model {m['base_model']}"
            )
        if list(m["agents"]) != list(agents):
            raise DiffMASError(
                f"adapter {self.path} was trained for agents {m['agents']} but the system has agents "
                f"{agents}; drop --system/--topology to use the trained system"
            )

    def attach(self, lm: LM) -> AgentAdapters:
        """Per-agent adapters on ``lm`` with the trained weights, switched per agent.

        Attaching the same checkpoint to the same LM again (e.g. one evaluation call per batch)
        reuses the adapters already there; another checkpoint needs a fresh copy of the model."""
        attached = getattr(lm, "_diffmas_checkpoint", None)
        if attached is not None:
            path, adapters = attached
            if path == self.path.resolve():
                return adapters
            raise DiffMASError(
                f"this model already carries the adapters of {path}; load a fresh copy of the model to run {self.path}"
            )
        settings = LoraSettings(**self.manifest["lora"])
        adapters = AgentAdapters(lm, list(self.manifest["agents"]), settings)
        load_adapter_weights(adapters, self.path)
        lm._diffmas_checkpoint = (self.path.resolve(), adapters)
        return adapters

    def load_comm(self, lm: LM, realign: bool):
        """The trained communication adapter, or None when the run trained none."""
        if not self.manifest.get("comm_adapter"):
            return None
        comm = CommAdapter.from_lm(lm, realign=self.manifest.get("realign", realign))
        load_comm_weights(comm, self.path)
        comm.requires_grad_(False)
        return comm


def hub_id_of(name: str) -> str | None:
    """The Hugging Face id of a model as the user named it: a registry name's hub id, a hub id
    itself (``owner/name`` that is no local directory), else None (a local model)."""
    entry = get_offline_model(name)
    if entry is not None:
        return entry.hub_id
    return name if name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/")) else None


def trained_base_model(manifest: dict) -> str | None:
    """The model to load for a checkpoint: the name it was trained with where that still works
    here (a registry name, a hub id, an existing directory), else its hub id."""
    name = manifest.get("base_model")
    if name and (get_offline_model(name) is not None or Path(name).exists() or hub_id_of(name) == name):
        return name
    return manifest.get("base_model_hub_id") or name


# What runs saved by earlier versions, whose config.json and manifest lack these keys, did.
BEFORE_WRITTEN = {"repeat_question": True, "latent_input": "hidden", "soft_temperature": 1.0}
LATENT_INPUT_KEYS = ("latent_input", "soft_temperature")


def trained_repeat_question(checkpoint: TrainedCheckpoint) -> bool:
    """Whether the checkpoint's agents were trained with the question in every prompt."""
    return bool(checkpoint.manifest.get("repeat_question", BEFORE_WRITTEN["repeat_question"]))


def trained_latent_input(checkpoint: TrainedCheckpoint, key: str):
    """The latent input setting ``key`` (one of LATENT_INPUT_KEYS) the checkpoint was trained with."""
    return checkpoint.manifest.get(key, BEFORE_WRITTEN[key])
