"""``diffmas``: a latent multi-agent system with trained per-agent adapters and communication map.

Exactly ``latent_mas`` (same prompts, same shared trace, same decoding), run by an LM whose agents
each write with their own trained LoRA adapter, and whose latent steps go through the trained
communication adapter instead of the fixed realignment, both loaded from a ``diffmas train``
checkpoint. Without ``--system``/``--topology`` the system the adapters were trained for is used.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from diffmas.agents import SystemSpec
from diffmas.checkpoint import LATENT_INPUT_KEYS, TrainedCheckpoint, trained_latent_input, trained_repeat_question
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.methods.base import DEFAULT_LATENT_STEPS, MethodConfig, missing_adapter
from diffmas.methods.latent_mas import LatentMAS

logger = logging.getLogger(__name__)


def open_checkpoint(method: str, adapter: str | None) -> TrainedCheckpoint:
    """The checkpoint a trained method loads (a clear error when none is given)."""
    if adapter is None:
        raise missing_adapter(method)
    return TrainedCheckpoint(adapter)


class DiffMAS(LatentMAS):
    name = "diffmas"
    needs_adapter = True

    def __init__(
        self,
        lm: LM,
        config: MethodConfig | None = None,
        *,
        family: str = "math",
        answer_format: str | None = None,
        system: SystemSpec | None = None,
        adapter: str | None = None,
    ):
        checkpoint = open_checkpoint(self.name, adapter)
        system = system or checkpoint.system
        if system is None:
            raise DiffMASError(f"{checkpoint.path} records no multi-agent system; pass --system")
        checkpoint.check(lm, self.name, [a.name for a in system.agents])
        config = config or MethodConfig()
        if config.repeat_question is None:  # not given: the prompts the adapters were trained on
            config = replace(config, repeat_question=trained_repeat_question(checkpoint))
        for key in LATENT_INPUT_KEYS:  # not given: the latent input the adapters were trained on
            if getattr(config, key) is None:
                config = replace(config, **{key: trained_latent_input(checkpoint, key)})
        if config.latent_steps is None:  # not given: as many latent steps as the adapters were trained with
            config = replace(config, latent_steps=checkpoint.manifest.get("latent_steps", DEFAULT_LATENT_STEPS))
        super().__init__(lm, config, family=family, answer_format=answer_format, system=system, adapter=adapter)
        self.checkpoint = checkpoint
        self.adapters = checkpoint.attach(lm)
        self.comm = checkpoint.load_comm(lm, self.config.realign)
        if self.comm is not None and self.config.latent_input == "soft":
            raise DiffMASError(
                f"{checkpoint.path} has a trained communication adapter, a map of hidden states, which soft "
                "latent inputs would leave out: run it without --latent-input soft"
            )
        self._note_differences()

    def _note_differences(self) -> None:
        """Say where this run's settings differ from those the adapters were trained with."""
        checkpoint, cfg = self.checkpoint, self.config
        trained = checkpoint.manifest.get("latent_steps")
        if trained is not None and trained != cfg.latent_steps:
            logger.warning(
                "%s was trained with %d latent steps per agent; running with %d (--latent-steps)",
                checkpoint.path,
                trained,
                cfg.latent_steps,
            )
        for key in LATENT_INPUT_KEYS:
            trained = trained_latent_input(checkpoint, key)
            if trained != getattr(cfg, key):
                flag = "--" + key.replace("_", "-")
                logger.warning(
                    "%s was trained with %s %s; running with %s", checkpoint.path, flag, trained, getattr(cfg, key)
                )
        repeat = trained_repeat_question(checkpoint)
        if repeat != cfg.repeat_question:
            flags = ("--no-repeat-question", "--repeat-question")
            logger.warning(
                "%s was trained with %s; running with %s, so its agents see prompts they were not trained on "
                "(pass %s to match)",
                checkpoint.path,
                flags[repeat],
                flags[not repeat],
                flags[repeat],
            )
