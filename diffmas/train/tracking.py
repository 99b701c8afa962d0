"""Experiment trackers for training runs, through accelerate's tracker classes (``--report-to``).

    diffmas train --config ... --report-to tensorboard        # <out>/trackers/<run name>/
    tensorboard --logdir runs/train-gsm8k-diffmas/trackers

Each step's log record (loss, learning rate, gradient norm, tokens, seconds, latent steps) goes to
every tracker named, from the main process; the run's settings are stored once as its
hyperparameters. ``log.jsonl`` is written as before. TensorBoard needs the ``tensorboard``
package, Weights & Biases ``wandb`` (``pip install 'diffmas[tracking]'``); any tracker accelerate
knows (mlflow, comet_ml, aim, ...) works once its package is installed.
"""

from __future__ import annotations

from pathlib import Path

from diffmas.errors import DiffMASError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow", "aim": "aim"}


def parse_report_to(value: str | None) -> list[str]:
    """``"tensorboard,wandb"`` -> ["tensorboard", "wandb"], checked against accelerate's trackers."""
    if not value or value == "none":
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        raise DiffMASError(f"--report-to: unknown trackers {unknown}; known: {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    return names


class Trackers:
    """The trackers of one run (main process only); ``log`` takes a training log record."""

    def __init__(self, names: list[str], out: Path, run_name: str, settings: dict):
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        PartialState()  # accelerate's trackers log through its logging, which needs its process state
        self.trackers = []
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            try:
                if cls.requires_logging_directory:
                    tracker = cls(run_name, logging_dir=str(out / "trackers"))
                else:
                    tracker = cls(run_name)
                # Only the main process makes trackers: each logs what it is given.
                tracker.main_process_only = False
                tracker.start()
            except (ImportError, ModuleNotFoundError) as exc:
                raise DiffMASError(
                    f"--report-to {name} needs the {PACKAGES.get(name, name)} package ({exc}): "
                    f"pip install {PACKAGES.get(name, name)}"
                ) from None
            tracker.store_init_configuration({k: v for k, v in settings.items() if _plain(v)})
            self.trackers.append(tracker)

    def log(self, record: dict) -> None:
        values = {f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(values, step=int(record["step"]))

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
