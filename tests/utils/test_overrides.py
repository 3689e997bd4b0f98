"""Command-line overrides before Hydra: brace ranges quoted, shell-expanded patterns refused."""
from __future__ import annotations

import subprocess

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from ofa.errors import RunConfigError
from ofa.utils.overrides import guess_pattern, prepare_overrides, quote_brace_ranges

PATTERN = "data/vqa/train-{000000..000009}.tar"


def test_a_brace_range_is_quoted_and_hydra_keeps_it_literal() -> None:
    arg = quote_brace_ranges(f"data.train_shards={PATTERN}")
    assert arg == f"data.train_shards='{PATTERN}'"
    assert OverridesParser.create().parse_override(arg).value() == PATTERN


@pytest.mark.parametrize("arg", ["-m", "optim.lr=1e-5,3e-5", "paths.root_dir=${oc.env:HOME}", "task=vqa",
                                 f"data.train_shards='{PATTERN}'", "--cfg"])
def test_other_arguments_are_left_alone(arg: str) -> None:
    assert quote_brace_ranges(arg) == arg


def test_several_patterns_joined_with_colons_are_one_quoted_value() -> None:
    value = f"{PATTERN}::data/cc/train-{{0..3}}.tar"
    assert prepare_overrides([f"data.train_shards={value}"]) == [f"data.train_shards='{value}'"]


def test_a_shell_expanded_pattern_is_refused_naming_the_key_and_the_quoted_form() -> None:
    expanded = subprocess.run(["bash", "-c", f"echo data.train_shards={PATTERN}"], capture_output=True,
                              text=True, check=True).stdout.split()
    assert len(expanded) == 10
    with pytest.raises(RunConfigError, match=r"^data\.train_shards given 10 times: quote the brace pattern") as err:
        prepare_overrides(["task=vqa", *expanded])
    assert str(err.value).endswith(f"'data.train_shards={PATTERN}'")


def test_a_later_override_of_the_same_key_still_wins_as_in_hydra() -> None:
    args = ["trainer.max_epochs=1", "logger=csv", "trainer.max_epochs=2"]
    assert prepare_overrides(args) == args


def test_guess_pattern_needs_one_varying_number() -> None:
    assert guess_pattern(["a-000.tar", "a-001.tar", "a-002.tar"]) == "a-{000..002}.tar"
    assert guess_pattern(["a.tar", "b.tar"]) is None


def test_the_converters_summary_line_prints_an_override_that_pastes(tmp_path) -> None:
    import shlex

    from ofa.datamodules.convert import _summary_line, shard_pattern

    summary = {"format": "vqa", "split": "train", "total": 95, "shards": [{}] * 10, "records": 95,
               "pattern": shard_pattern("train", 10), "skipped": {}, "skipped_total": 0}
    pasted = shlex.split(_summary_line(summary, tmp_path).split("pass to train.py: ")[1])  # as the shell reads it
    (arg,) = prepare_overrides(pasted)
    assert OverridesParser.create().parse_override(arg).value() == f"{tmp_path}/train-{{000000..000009}}.tar"


def test_one_value_repeated_is_not_a_shell_expansion() -> None:
    """Lightning's rank launcher re-runs the command with `hydra.run.dir="<dir>"` appended (DDP, FSDP2)."""
    args = ["task=vqa", "hydra.run.dir=/tmp/run", 'hydra.run.dir="/tmp/run"']
    assert prepare_overrides(args) == args
