"""``single_sft``: the single agent with its trained LoRA adapter (the control for ``diffmas``).

Same prompt and decoding as ``single``; the LM carries the one adapter that ``diffmas train
--method single_sft`` trained on the same data, steps and schedule as the multi-agent system.
"""

from __future__ import annotations

from diffmas.engine import LM
from diffmas.methods.base import MethodConfig
from diffmas.methods.diffmas import open_checkpoint
from diffmas.methods.single import SingleAgent


class SingleSFT(SingleAgent):
    name = "single_sft"
    needs_adapter = True

    def __init__(
        self,
        lm: LM,
        config: MethodConfig | None = None,
        *,
        family: str = "math",
        answer_format: str | None = None,
        system=None,
        adapter: str | None = None,
    ):
        checkpoint = open_checkpoint(self.name, adapter)
        checkpoint.check(lm, self.name, [self.agent])
        super().__init__(lm, config, family=family, answer_format=answer_format, adapter=adapter)
        self.checkpoint = checkpoint
        self.adapters = checkpoint.attach(lm)
