"""The subcommands of ``diffmas``: name -> (module with ``parser()`` and ``main(argv) -> int``, summary)."""

SUBCOMMANDS = {
    "models": ("diffmas.cli.models", "list the offline models and install them"),
    "tasks": ("diffmas.cli.tasks", "list the tasks (benchmarks)"),
    "run": ("diffmas.cli.run", "answer one question and show what every agent contributed"),
    "eval": ("diffmas.cli.eval", "evaluate a method on a task"),
    "rescore": ("diffmas.cli.rescore", "score saved evaluation outputs again with the current answer extraction"),
    "compare": ("diffmas.cli.compare", "compare evaluation runs: table, CSV, plots, HTML report"),
    "collect": ("diffmas.cli.collect", "rejection sampling: keep the correct answers of a sampled teacher"),
    "train": ("diffmas.cli.train", "train a latent multi-agent system (or the single-agent control)"),
    "export": ("diffmas.cli.export", "a trained run's inference files with a model card (and the hub)"),
    "lm-eval": ("diffmas.cli.lm_eval", "lm-evaluation-harness's command line with the diffmas model"),
    "demo": ("diffmas.cli.demo", "the main job: compare every method on built-in data"),
}
# lm-eval's options are lm_eval's own: its help comes from lm_eval.
WITHOUT_STORED_HELP = {"lm-eval"}
