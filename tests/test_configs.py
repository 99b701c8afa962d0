"""Every shipped config loads into its command's config, and the recipe configs fit together."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffmas.cli._common import parse_config
from diffmas.evaluate import EvalConfig
from diffmas.train.collect import CollectConfig
from diffmas.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KIND = {"collect": CollectConfig, "eval": EvalConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_loads(path):
    cls = KIND.get(path.name.split("-")[0], TrainConfig)
    cfg, _ = parse_config("test", "", cls, ["--config", str(path)])
    assert isinstance(cfg, cls)


@pytest.mark.parametrize("size", ["0.5b", "1.5b"])
def test_reader_recipe_trains_on_what_its_collect_config_keeps(size):
    collect, _ = parse_config("t", "", CollectConfig, ["--config", str(CONFIGS / f"collect-gsm8k-qwen{size}.yaml")])
    reader, _ = parse_config("t", "", TrainConfig, ["--config", str(CONFIGS / f"reader-gsm8k-qwen{size}.yaml")])
    assert reader.trajectories == collect.out and reader.target == "trajectory"
    assert reader.grad_through == "none" and reader.trace_cache and reader.method == "diffmas"
    assert reader.model == collect.model and f"-{size}-" in reader.model
    # The protocol: GSM8K train's last 1,000 are the development and final sets, never trained on.
    assert reader.exclude_last == collect.exclude_last == 1000 and reader.split == collect.split == "train"
