"""Typed configs (CLI + YAML) and system definitions."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from diffmas.agents import BUILTIN_SYSTEMS, load_system
from diffmas.config import add_arguments, from_args
from diffmas.engine import LM
from diffmas.errors import DiffMASError, UnknownNameError
from diffmas.evaluate import EvalConfig
from diffmas.methods import LatentMAS, MethodConfig


def parse(argv, yaml_path=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, EvalConfig)
    return from_args(EvalConfig, parser.parse_args(argv), yaml_path)


def test_flags_override_yaml(tmp_path):
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text("task: gsm8k\nbatch_size: 4\nrealign: false\nlatent_steps: 3\n")
    cfg = parse(["--batch-size", "2"], str(cfg_file))
    assert (cfg.task, cfg.batch_size, cfg.realign, cfg.latent_steps) == ("gsm8k", 2, False, 3)
    assert parse(["--no-realign"]).realign is False
    assert cfg.method_config().latent_steps == 3


def test_unknown_yaml_key_is_named_with_a_suggestion(tmp_path):
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text("batch_szie: 4\n")
    with pytest.raises(DiffMASError, match="unknown key 'batch_szie'.*did you mean 'batch_size'"):
        parse([], str(cfg_file))


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--latent-steps", "-1"], ["--max-new-tokens", "0"]])
def test_out_of_range_values_are_rejected(argv):
    with pytest.raises(DiffMASError):
        parse(argv)


def test_builtin_systems_and_visibility():
    seq, hier = load_system("sequential"), load_system(None, "hierarchical")
    assert [a.role for a in seq.agents] == ["planner", "critic", "refiner", "judger"]
    assert seq.sees(2) == [0, 1]
    assert hier.sees(1) == [] and hier.sees(3) == [0, 1, 2]
    # A sequential system run hierarchically keeps its agents but changes who sees whom.
    assert load_system("sequential", "hierarchical").sees(2) == []
    assert set(BUILTIN_SYSTEMS) == {"sequential", "hierarchical"}


def test_system_from_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "topology: sequential\nagents:\n"
        "  - {name: Thinker, role: planner, latent_steps: 4}\n"
        "  - {name: Checker, role: critic, prompt: 'Check the {noun} carefully.'}\n"
        "  - {name: Answerer, role: judger}\n"
    )
    spec = load_system(str(path))
    assert spec.name == "mine" and [a.name for a in spec.agents] == ["Thinker", "Checker", "Answerer"]
    assert spec.agents[0].latent_steps == 4
    assert spec.agents[1].instruction("math") == "Check the math problem carefully."


def test_bad_systems_are_rejected(tmp_path):
    with pytest.raises(UnknownNameError, match="valid systems: hierarchical, sequential"):
        load_system("ring")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  - {name: A, role: wizard}\n")
    with pytest.raises(UnknownNameError, match="unknown role 'wizard'"):
        load_system(str(bad))
    bad.write_text("agents:\n  - {name: A, role: planner, steps: 3}\n")
    with pytest.raises(DiffMASError, match="unknown key 'steps'"):
        load_system(str(bad))


def test_agents_told_the_question_by_their_system(tiny_qwen, tmp_path):
    """question: true states it to that agent as well; false where nothing else states it is an error."""
    lm, question = LM(*tiny_qwen), "Tom has 17 apples and gives 5 away. How many are left?"
    root = Path(__file__).resolve().parents[1]
    asked = []
    for system in (load_system("sequential"), load_system(str(root / "configs/systems/judger-asked.yaml"))):
        method = LatentMAS(lm, MethodConfig(latent_steps=1, max_new_tokens=2), answer_format="Box it.", system=system)
        asked.append([question in lm.tokenizer.decode(p[0]) for p in method.build_prompts([question])])
        with torch.no_grad():
            assert method.run([question])[0].final_text is not None
    assert asked == [[True, False, False, False], [True, False, False, True]]
    planner_unasked = tmp_path / "unasked.yaml"
    planner_unasked.write_text(
        "agents:\n  - {name: Planner, role: planner, question: false}\n  - {name: Judger, role: judger}\n"
    )
    method = LatentMAS(lm, MethodConfig(), answer_format="Box it.", system=load_system(str(planner_unasked)))
    with pytest.raises(DiffMASError, match="Planner has question: false"):
        method.build_prompts([question])


def test_help_states_each_default_once(capsys):
    from diffmas.cli import main

    for command in ("eval", "train", "collect"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text, command
        assert "(default: the task's own default) (default" not in text
        assert "(default: False)" in text  # a boolean's real default is still shown
