"""The end-to-end trainer: LoRA adapters (and the communication map) trained on reference answers.

Both methods train through :func:`trajectory_loss`, on the very forward pass their inference
runs, with gradients on: ``diffmas`` a latent multi-agent system, ``single_sft`` one agent with
one LoRA of the same settings on the same data, steps and schedule (the honest control).

Processes and precision come from accelerate (:mod:`diffmas.train.distributed`): launched with
several processes (``accelerate launch --multi_gpu -m diffmas train ...`` or ``torchrun``), every
process takes its own slice of each global batch, gradients are averaged across processes before
clipping, and only rank 0 writes logs and checkpoints, so every process holds the same adapters
after every step. Mixed precision runs each step's forward pass under accelerate's autocast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmas import checkpoint as ckpt
from diffmas.adapters import AgentAdapters
from diffmas.agents import load_system
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.latent import CommAdapter
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent, TextMAS
from diffmas.rundir import RunLock
from diffmas.tasks import get_task
from diffmas.train import saving
from diffmas.train.collect import load_trajectories
from diffmas.train.config import FIXED_ON_RESUME, TrainConfig
from diffmas.train.data import DataStream, TrainItem, build_items, load_examples
from diffmas.train.distributed import Distributed
from diffmas.train.memory import enable_mlp_checkpointing
from diffmas.train.objective import TrajectoryLoss, role_loss, trajectory_loss
from diffmas.train.saving import LOG
from diffmas.train.traces import TraceStore, default_trace_dir
from diffmas.train.tracking import Trackers, parse_report_to

logger = logging.getLogger(__name__)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run: ``Trainer(cfg).train()``; see the module docstring."""

    def __init__(self, cfg: TrainConfig, lm: LM | None = None, progress: bool = True):
        self.progress = progress
        self.trackers: Trackers | None = None  # made on the main process when training starts (--report-to)
        self.dist = Distributed.from_env(cfg.device, cfg.mixed_precision)
        # As resolved (flag, accelerate's launch setting or "no"): written with every checkpoint.
        # Autocast does not reach oneDNN-packed products, so mixed precision trains on plain ones.
        mixed = self.dist.mixed_precision
        if mixed != "no" and cfg.packed and self.dist.main:
            logger.info("mixed precision %s: packed weights are off (autocast does not reach them)", mixed)
        self.cfg = cfg = replace(cfg, mixed_precision=mixed, packed=cfg.packed and mixed == "no")
        self.out = cfg.out_dir()
        self.task = get_task(cfg.task)
        self.examples, self.source = load_examples(
            self.task, cfg.split, cfg.data_path, cfg.exclude_last, cfg.offset, cfg.limit, cfg.seed, cfg.fields
        )
        self.lm = lm or self._load_lm()
        seed_all(cfg.seed)  # the adapters' initialisation: identical in every process
        self._build_method()
        self.traces = self._trace_store()
        trajectories = load_trajectories(cfg.trajectories) if cfg.trajectories else None
        # Roles are learnt by the agents of the same names; a target alone comes from any teacher.
        agents = [a.name for a in self.system.agents] if self.system is not None and cfg.role_steps else None
        self.items = build_items(self.task, self.examples, trajectories, cfg.target, agents)
        if cfg.gradient_checkpointing:
            enable_mlp_checkpointing(self.lm.model, adapters=len(self.adapters.adapter_names))
        seed_all(cfg.seed + 7919 * self.dist.rank)  # dropout: each process draws its own
        self.dropout_gen = torch.Generator().manual_seed(cfg.seed + 7919 * self.dist.rank)
        per_step = cfg.batch_size * cfg.grad_accum * self.dist.world
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(self.items) / per_step))
        if cfg.role_steps >= self.total_steps:
            raise DiffMASError(
                f"role_steps ({cfg.role_steps}) leaves no step of the {self.total_steps} for the joint "
                "latent stage; lower --role-steps or raise --max-steps"
            )
        self._build_optimizer()
        self.stream = DataStream(len(self.items), cfg.seed)
        self.step = 0
        self.bad_steps = 0  # consecutive steps skipped for a non-finite loss or gradient

    # -- setup ----------------------------------------------------------------------------------
    def _load_lm(self) -> LM:
        device = self.cfg.device
        if device == "cuda" and self.dist.world > 1:
            device = f"cuda:{self.dist.local_rank}"
        return self.cfg.load_lm(device)

    def _build_method(self) -> None:
        cfg, lm, task = self.cfg, self.lm, self.task
        method_cfg = MethodConfig(
            latent_steps=cfg.latent_steps_at(0),
            realign=cfg.realign,
            latent_input=cfg.latent_input,
            soft_temperature=cfg.soft_temperature,
            repeat_question=cfg.repeat_question,
        )
        self.comm: CommAdapter | None = None
        if cfg.method == "single_sft":
            self.system = None
            self.method = SingleAgent(lm, method_cfg, family=task.family, answer_format=task.answer_format)
            self.adapters = AgentAdapters(lm, [SingleAgent.agent], cfg.lora())
            return
        self.system = load_system(cfg.system, cfg.topology)
        self.method = LatentMAS(
            lm, method_cfg, family=task.family, answer_format=task.answer_format, system=self.system
        )
        # The two-stage schedule's first stage: the same agents and adapters, talking in text.
        self.text_method = TextMAS(
            lm, method_cfg, family=task.family, answer_format=task.answer_format, system=self.system
        )
        self.adapters = AgentAdapters(lm, [a.name for a in self.system.agents], cfg.lora())
        if cfg.comm_adapter:
            self.comm = self.method.comm = CommAdapter.from_lm(lm, realign=cfg.realign)

    def _trace_store(self) -> TraceStore | None:
        """The store of upstream traces when no gradient can reach the upstream agents."""
        cfg = self.cfg
        if cfg.method != "diffmas" or cfg.grad_through != "none" or not cfg.trace_cache:
            return None
        if cfg.shared_adapter:  # the upstream agents write with the adapter being trained
            if self.dist.main:
                logger.warning(
                    "with --shared-adapter the upstream agents use the trained adapter, so their trace "
                    "changes at every step: it is built at every step, not stored"
                )
            return None
        kernels = {k: getattr(cfg, k) for k in ("model", "packed", "cpu_attention", "batch_invariant")}
        if cfg.mixed_precision != "no":  # autocast changes the trace's arithmetic (absent: the keys of before)
            kernels["mixed_precision"] = cfg.mixed_precision
        return TraceStore(self.method, cfg.trace_dir or default_trace_dir(), self.adapters, kernels)

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        groups = [{"params": list(self.adapters.parameters()), "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
        if self.comm is not None:  # no weight decay: it would pull the realignment towards zero
            groups.append({"params": list(self.comm.parameters()), "weight_decay": 0.0, "lr": cfg.comm_lr or cfg.lr})
        self.params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cfg.lr_factor(step, self.total_steps)
        )
        self.optimizer = self.dist.prepare_optimizer(optimizer)

    # -- one step -------------------------------------------------------------------------------
    @property
    def stage(self) -> str:
        """ "role" during the first ``role_steps`` steps of a two-stage schedule, else "joint"."""
        return "role" if self.step < self.cfg.role_steps else "joint"

    def loss(self, batch: list[TrainItem]) -> TrajectoryLoss:
        questions = [item.question for item in batch]
        if self.stage == "role":
            return role_loss(self.text_method, questions, [item.texts for item in batch])
        targets = [item.target for item in batch]
        return trajectory_loss(
            self.method, questions, targets, self.cfg.objective(), generator=self.dropout_gen, traces=self.traces
        )

    def latent_steps_now(self) -> int:
        return self.cfg.latent_steps_at(self.step) if self.system is not None else 0

    def train_step(self) -> dict:
        """One optimizer step (``grad_accum`` micro-batches); returns its log record."""
        cfg, dist = self.cfg, self.dist
        started = time.perf_counter()
        latent = self.latent_steps_now()
        stage = self.stage
        self.method.config.latent_steps = latent
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        losses, tokens = [], 0
        for _ in range(cfg.grad_accum):
            indices = self.stream.take(cfg.batch_size * dist.world)
            mine = indices[dist.rank * cfg.batch_size : (dist.rank + 1) * cfg.batch_size]
            with dist.autocast():
                out = self.loss([self.items[i] for i in mine])
            dist.backward(out.loss / cfg.grad_accum)
            losses.append(out.loss.detach().float())
            tokens += int(out.tokens.sum())
        loss = torch.stack(losses).mean()
        dist.mean_([loss] + [p.grad for p in self.params if p.grad is not None])
        record = {
            "step": self.step + 1,
            "loss": loss.item(),
            "lr": lr,
            "stage": stage,
            "latent_steps": latent if stage == "joint" else 0,
            "tokens": tokens * dist.world,
        }
        norm = dist.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        # float16: gradients that overflow the loss scale are the scaler's business (it skips the
        # update and lowers its scale), not a diverging run.
        overflow = dist.scaler is not None and math.isfinite(loss.item()) and not math.isfinite(float(norm))
        bad = None if overflow else self._non_finite(loss, norm)
        if bad is None:
            self.optimizer.step()
        self.scheduler.step()  # a skipped step still uses up its data and its place in the schedule
        self.step += 1
        record.update(
            grad_norm=float(norm), seconds=round(time.perf_counter() - started, 4), epoch=round(self.stream.position, 4)
        )
        if bad is not None:
            record["skipped"] = bad
        elif overflow:
            record["scaler_skipped"] = True
        return record

    def _non_finite(self, loss: torch.Tensor, norm: torch.Tensor) -> str | None:
        """Why this step must not update the weights (a NaN or infinite loss or gradient), else None.
        Every process sees the same averaged loss and gradients, so all decide alike."""
        bad = None
        if not math.isfinite(loss.item()):
            bad = f"loss is {loss.item()}"
        elif not math.isfinite(float(norm)):
            bad = f"gradient norm is {float(norm)}"
        if bad is None:
            self.bad_steps = 0
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        if self.dist.main:
            logger.warning("step %d: %s; skipped (%d in a row)", self.step + 1, bad, self.bad_steps)
        return bad

    def _stop_if_diverged(self, record: dict) -> None:
        """After ``max_bad_steps`` skipped steps in a row: save the (still finite) weights and stop."""
        if self.bad_steps < self.cfg.max_bad_steps:
            return
        where = ckpt.step_dir(self.out, self.step)
        self.save(where)
        raise DiffMASError(
            f"{self.bad_steps} steps in a row had a non-finite loss or gradient ({record['skipped']}), the last at "
            f"step {self.step}; stopped. The weights are still finite and saved in {where}: lower --lr or "
            "--max-grad-norm or check the data, then continue with --resume"
        )

    # -- the run ----------------------------------------------------------------------------------
    def train(self) -> dict:
        """Train to ``total_steps`` (resuming first if asked); returns a summary."""
        started = time.perf_counter()
        lock = self._prepare_out()
        try:
            return self._train(started)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, started: float) -> dict:
        cfg, dist = self.cfg, self.dist
        if cfg.resume and (latest := ckpt.latest_checkpoint(self.out, verify=True)) is not None:
            self.restore(latest)
        first, last = self.step, None
        names = parse_report_to(cfg.report_to)
        if names and dist.main:
            self.trackers = Trackers(names, self.out, self.out.name, asdict(cfg))
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (self.progress and dist.main),
            desc=f"train {cfg.method}",
            unit="step",
        )
        self.lm.model.train()
        stop = min(self.total_steps, cfg.until_step or self.total_steps)
        try:
            while self.step < stop:
                last = self.train_step()
                if self.step % cfg.log_every == 0 or self.step == self.total_steps or "skipped" in last:
                    self._log(last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", latent=last["latent_steps"])
                bar.update(1)
                self._stop_if_diverged(last)
                if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.save(ckpt.step_dir(self.out, self.step))
        finally:
            bar.close()
            self.lm.model.eval()
            if self.trackers is not None:
                self.trackers.finish()
                self.trackers = None
        self.dist.check_identical([p.detach() for p in self.params], "adapters")
        done = self.step >= self.total_steps
        where = self.out / "final" if done else ckpt.step_dir(self.out, self.step)
        if done or ckpt.read_manifest(where) is None:
            self.save(where)
        return {
            "out": str(self.out),
            "final": str(where),
            "finished": done,
            "steps": self.step,
            "steps_this_run": self.step - first,
            "last": last,
            "examples": len(self.examples),
            "items": len(self.items),
            "source": self.source,
            "seconds": time.perf_counter() - started,
            "trainable_parameters": sum(p.numel() for p in self.params),
            "traces": self.traces.summary() if self.traces is not None else None,
        }

    def _prepare_out(self) -> RunLock | None:
        """The run directory, checked and locked (by the main process) for this run."""
        lock = None
        if self.dist.main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DiffMASError(f"cannot create output directory {self.out}: {exc.strerror}") from None
            if not os.access(self.out, os.W_OK):
                raise DiffMASError(f"output directory {self.out} is not writable; choose another --out")
            lock = RunLock(self.out, f"diffmas train --method {self.cfg.method}").acquire()
            try:
                self._check_out()
            except BaseException:
                lock.release()
                raise
        self.dist.barrier()
        return lock

    def _check_out(self) -> None:
        found = ckpt.complete_checkpoints(self.out)
        if not self.cfg.resume and (found or (self.out / LOG).exists()):
            raise DiffMASError(
                f"{self.out} already holds a training run; pass --resume to continue it or choose another --out"
            )
        if self.cfg.resume and found and ckpt.latest_checkpoint(self.out, verify=True) is None:
            problems = "; ".join(f"{p.name}: {ckpt.damage(p)}" for _, p in found)
            raise DiffMASError(
                f"every checkpoint in {self.out} is damaged ({problems}), so there is nothing to resume "
                f"from; restore one from a copy, or move {self.out} away to train from scratch"
            )
        saving.clean(self.out, self.cfg.keep_checkpoints)
        if not self.cfg.resume or not found:
            (self.out / LOG).unlink(missing_ok=True)  # a fresh start: no log lines of an earlier run
        (self.out / "train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))

    def _log(self, record: dict) -> None:
        if self.dist.main:
            with open(self.out / LOG, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self.trackers is not None:
                self.trackers.log(record)

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, dest: Path) -> None:
        """Write a complete checkpoint to ``dest`` atomically (rank 0; every rank adds its RNG)."""
        dist = self.dist
        tmp = saving.staging_dir(dest)
        if dist.main:
            saving.begin(dest)
        dist.barrier()
        torch.save(rng_state() | {"dropout": self.dropout_gen.get_state()}, tmp / f"rng-{dist.rank}.pt")
        dist.barrier()
        if dist.main:
            last_used = self.cfg.latent_steps_at(max(self.step - 1, 0)) if self.system is not None else 0
            manifest = saving.manifest_of(
                self.adapters,
                self.lm,
                method=self.cfg.method,
                step=self.step,
                system=self.system,
                comm=self.comm is not None,
                realign=self.cfg.realign,
                latent_input=self.cfg.latent_input,
                soft_temperature=self.cfg.soft_temperature,
                latent_steps=last_used,
                task=self.cfg.task,
                repeat_question=self.cfg.repeat_question,
            )
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "data": self.stream.state_dict(),
                "world_size": dist.world,
            }
            if dist.scaler is not None:
                state["scaler"] = dist.scaler.state_dict()
            saving.write_payload(tmp, manifest, self.adapters, self.comm, state, asdict(self.cfg))
            saving.commit(tmp, dest)
            saving.clean(self.out, self.cfg.keep_checkpoints)
        dist.barrier()

    def restore(self, path: Path) -> None:
        """Continue from checkpoint ``path``: weights, optimizer, schedule, data position, RNG."""
        saved = json.loads((path / "config.json").read_text())
        now = asdict(self.cfg)
        # Keys older versions did not write: what those versions did.
        saved = {**{f.name: f.default for f in fields(TrainConfig)}, **ckpt.BEFORE_WRITTEN, **saved}
        changed = [k for k in FIXED_ON_RESUME if saved[k] != now.get(k)]
        if changed:
            detail = ", ".join(f"{k}: {saved[k]!r} -> {now.get(k)!r}" for k in changed)
            raise DiffMASError(
                f"cannot resume {path} with different settings ({detail}); use the run's "
                "own settings or start a new --out"
            )
        ckpt.load_adapter_weights(self.adapters, path)
        if self.comm is not None:
            ckpt.load_comm_weights(self.comm, path)
        state = torch.load(path / ckpt.STATE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.dist.scaler is not None and "scaler" in state:
            self.dist.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["data"])
        self.step = int(state["step"])
        rng_file = path / f"rng-{self.dist.rank}.pt"
        if rng_file.exists() and state.get("world_size") == self.dist.world:
            rng = torch.load(rng_file, weights_only=True)
            set_rng_state(rng)
            self.dropout_gen.set_state(rng["dropout"])
        if self.dist.main:
            self._truncate_log()
            logger.info("resuming from %s at step %d", path, self.step)

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the checkpoint (written before an interruption)."""
        path = self.out / LOG
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


def train(cfg: TrainConfig, lm: LM | None = None, progress: bool = True) -> dict:
    """Run (or resume) the training run ``cfg``; returns its summary."""
    return Trainer(cfg, lm=lm, progress=progress).train()
