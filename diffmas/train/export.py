"""Exporting a trained checkpoint: only what inference needs, a filled model card, and sharing.

    diffmas export runs/train-gsm8k-diffmas --out exports/gsm8k-diffmas [--results runs/eval/summary.json]
    diffmas export runs/train-gsm8k-diffmas --out exports/gsm8k-diffmas --hub-repo you/gsm8k-diffmas

The export is itself a checkpoint (``diffmas eval --adapter DIR`` reads it, its manifest's hashes
are checked) without the optimizer and RNG state that only resuming needs. Each agent's adapter
is a plain PEFT folder whose ``adapter_config.json`` names the base model by its Hugging Face id,
so ``peft.PeftModel.from_pretrained(base, DIR / "adapters" / AGENT)`` loads it; the communication
map is ``comm.safetensors``, read by :func:`load_comm`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from diffmas.checkpoint import ADAPTERS, COMM, MANIFEST, TrainedCheckpoint
from diffmas.errors import DiffMASError
from diffmas.train.saving import LOG, name_base_model, write_manifest


def export(checkpoint: str | Path, out: str | Path, results: list[str | Path] = (), force: bool = False) -> Path:
    """Write the inference files of ``checkpoint`` (a run directory or one of its checkpoints)
    and a model card into ``out``; returns ``out``. ``results``: ``summary.json`` files of
    evaluations of this checkpoint, quoted in the card."""
    ckpt = TrainedCheckpoint(checkpoint)  # verified against its recorded hashes
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise DiffMASError(f"{out} exists and is not empty; choose another --out or pass --force")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ckpt.path / ADAPTERS, out / ADAPTERS)
    if (ckpt.path / COMM).is_file():
        shutil.copy2(ckpt.path / COMM, out / COMM)
    config = json.loads((ckpt.path / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "train_config.yaml").write_text(yaml.safe_dump(retrain_config(config), sort_keys=False))
    manifest = {k: v for k, v in ckpt.manifest.items() if k != "files"}
    manifest["exported_from"] = str(ckpt.path)
    name_base_model(out / ADAPTERS, manifest)  # checkpoints written before the hub id was recorded
    summaries = [_read_summary(Path(r)) for r in results]
    history = _read_log(ckpt.path)
    card = model_card(manifest, config, summaries, history)
    (out / "README.md").write_text(card)
    for agent_dir in sorted((out / ADAPTERS).iterdir()):
        if agent_dir.is_dir():  # PEFT's empty template, replaced by the card of the whole system
            (agent_dir / "README.md").write_text(agent_card(manifest, agent_dir.name))
    write_manifest(out, manifest)
    return out


def load_comm(path: str | Path, lm):
    """The trained communication map (hidden state -> latent input) of a checkpoint or export, on
    ``lm``; None when the run trained none (latent steps then use the realignment alone)."""
    ckpt = TrainedCheckpoint(path)
    return ckpt.load_comm(lm, bool(ckpt.manifest.get("realign", True)))


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an export folder to the Hugging Face hub as a model repository; returns its URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise DiffMASError(f"{folder} is not an export (no {MANIFEST}); run `diffmas export` first")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return f"https://huggingface.co/{repo_id}"


def retrain_config(config: dict) -> dict:
    """The run's settings as a ``diffmas train --config`` file (paths and resume flags left out)."""
    drop = {"out", "resume", "cache_dir", "trace_dir"}
    return {k: v for k, v in config.items() if k not in drop and v is not None}


def _read_summary(path: Path) -> dict:
    path = path / "summary.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DiffMASError(f"cannot read the evaluation summary {path} ({exc}); pass a `diffmas eval` output") from None


def _read_log(ckpt_path: Path) -> list[dict]:
    """The training log of the run the checkpoint belongs to (run/final or run/checkpoints/step-N)."""
    for run in (ckpt_path.parent, ckpt_path.parent.parent):
        if (run / LOG).is_file():
            lines = (run / LOG).read_text().splitlines()
            return [json.loads(line) for line in lines if line.strip()]
    return []


def model_card(manifest: dict, config: dict, summaries: list[dict], history: list[dict]) -> str:
    base = manifest.get("base_model_hub_id") or manifest.get("base_model")
    system = manifest.get("system") or {}
    agents = ", ".join(manifest.get("agents", []))
    lora = manifest.get("lora", {})
    front = {
        "library_name": "peft",
        "base_model": base,
        "tags": ["diffmas", "lora", "multi-agent", "latent-communication", manifest.get("task", "")],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [f"# DiffMAS {manifest['method']} adapters for {base}", ""]
    lines += [
        f"LoRA adapters trained with DiffMAS's `diffmas train` (method `{manifest['method']}`, "
        f"step {manifest['step']}) on the frozen base model `{base}`.",
        "",
        "## System",
        "",
        f"- agents: {agents} (one LoRA each, under `adapters/<agent>/`)",
        f"- topology: {system.get('topology', 'single agent')}; latent steps per upstream agent: "
        f"{manifest.get('latent_steps', 0)}; realignment: {manifest.get('realign')}",
        f"- communication map trained: {bool(manifest.get('comm_adapter'))}"
        + (" (`comm.safetensors`)" if manifest.get("comm_adapter") else ""),
        f"- LoRA: rank {lora.get('rank')}, alpha {lora.get('alpha')}, on {', '.join(lora.get('target_modules', []))}",
        "",
        "## Data and recipe",
        "",
        f"- task: {config.get('task')} ({config.get('split')} split, last {config.get('exclude_last', 0)} "
        "problems held out)",
        f"- targets: {config.get('target')}"
        + (f" from `{config.get('trajectories')}`" if config.get("trajectories") else ""),
        f"- gradient reach: {config.get('grad_through')}; lr {config.get('lr')}, {config.get('schedule')} schedule, "
        f"{config.get('epochs')} epochs, batch {config.get('batch_size')} x {config.get('grad_accum')}, "
        f"seed {config.get('seed')}, dtype {config.get('dtype')}",
        "- retrain: `diffmas train --config train_config.yaml --out runs/retrained`",
    ]
    if history:
        first, last = history[0], history[-1]
        lines.append(f"- training loss: {first.get('loss', float('nan')):.4f} at step {first.get('step')} -> "
                     f"{last.get('loss', float('nan')):.4f} at step {last.get('step')}")  # fmt: skip
    lines += ["", "## Results", ""]
    if summaries:
        lines += [
            "| method | task | split | n | accuracy | 95% CI | generated tokens |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in summaries:
            low, high = (s.get("ci95") or [None, None])[:2]
            ci = f"{100 * low:.1f}-{100 * high:.1f}" if low is not None else "-"
            lines.append(
                f"| {s.get('method')} | {s.get('task')} | {s.get('split') or 'default'} | {s.get('n')} | "
                f"{100 * s.get('accuracy', 0):.1f}% | {ci} | {s.get('mean_generated_tokens', 0):.1f} |"
            )
    else:
        lines.append("No evaluation was attached to this export (`diffmas export --results SUMMARY`).")
    lines += [
        "",
        "## Use",
        "",
        f"    diffmas eval --method {manifest['method']} --adapter THIS_FOLDER --task {manifest.get('task')}",
        "",
        "or, for one agent's adapter on its own, `peft.PeftModel.from_pretrained(base_model, "
        '"THIS_FOLDER/adapters/AGENT")`; the communication map loads with '
        "`diffmas.train.export.load_comm(THIS_FOLDER, lm)`.",
        "",
        "Intended for research on trained latent multi-agent communication and for reproducing DiffMAS results; "
        "it inherits the base model's limitations and was trained and measured on one task only.",
        "",
    ]
    return "\n".join(lines)


def agent_card(manifest: dict, agent: str) -> str:
    base = manifest.get("base_model_hub_id") or manifest.get("base_model")
    front = yaml.safe_dump({"library_name": "peft", "base_model": base}, sort_keys=False).strip()
    return (
        f"---\n{front}\n---\n\n# {agent}'s LoRA adapter ({manifest['method']})\n\n"
        f"One agent of a DiffMAS system trained on `{base}`; the system, its data and results are in the "
        "README.md of the export folder two levels up. Load it alone with "
        f'`peft.PeftModel.from_pretrained(base_model, "adapters/{agent}")`.\n'
    )
