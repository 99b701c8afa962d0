"""``diffmas lm-eval``: lm-evaluation-harness's own command line with the ``diffmas`` model registered.

lm_eval 0.4 finds only the models of its own table and those registered by code already imported;
its command line imports no user code, so ``lm_eval --model diffmas`` cannot work. This command is
lm_eval's (every flag and subcommand the same: ``diffmas lm-eval --tasks gsm8k --model diffmas
...``, ``diffmas lm-eval ls tasks``) after ``import diffmas.lm_eval_adapter``.
"""

from __future__ import annotations

from diffmas.errors import DiffMASError


def main(argv: list[str]) -> int:
    try:
        from diffmas import lm_eval_adapter
    except ImportError as exc:
        if "lm_eval" not in str(exc):
            raise
        raise DiffMASError("lm-evaluation-harness is not installed: pip install 'diffmas[lm-eval]'") from None
    return lm_eval_adapter.main(argv)
