"""Command-line overrides as the user typed them, made safe before Hydra parses them.

Shard patterns use webdataset's brace ranges (`train-{000000..000009}.tar`). Two things go wrong on a
command line (docs/PLATFORM.md, "Overrides"):
- quoted for the shell, the value reaches Hydra with its braces, which its override grammar reads as a
  dict (`mismatched input '{'`): `quote_brace_ranges` wraps such a value in Hydra quotes (`key='...'`
  keeps braces literal);
- unquoted, the shell expands the range into one override per shard and Hydra keeps the last one, so
  the run silently trains on one shard: `refuse_repeated_keys` stops it with one line.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from ofa.errors import RunConfigError

BRACE_RANGE = re.compile(r"(?<!\$)\{[^{}$]*\.\.[^{}$]*\}")  # {000..009} or {a..c}; never ${interpolation}
OVERRIDE = re.compile(r"^(?P<key>[+~]{0,2}[\w.@/-]+)=(?P<value>.*)$", re.S)
DIGITS = re.compile(r"\d+")


def split_override(arg: str) -> tuple[str, str] | None:
    """`key=value` -> (key, value); None for options (`-m`, `--cfg`) and anything else."""
    match = None if arg.startswith("-") else OVERRIDE.match(arg)
    return (match["key"], match["value"]) if match else None


def quote_brace_ranges(arg: str) -> str:
    """`k=a-{0..9}.tar` -> `k='a-{0..9}.tar'`: a value with a brace range, unless already quoted."""
    parts = split_override(arg)
    if parts is None or not BRACE_RANGE.search(parts[1]) or parts[1][:1] in "'\"":
        return arg
    key, value = parts
    quote = "'" if "'" not in value else '"'
    if quote in value:
        return arg  # both quote kinds inside: leave it to Hydra's own error
    return f"{key}={quote}{value}{quote}"


def _runs(args: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Consecutive overrides of the same key: [(key, [value, ...]), ...]."""
    runs: list[tuple[str, list[str]]] = []
    for arg in args:
        parts = split_override(arg)
        if parts and runs and runs[-1][0] == parts[0]:
            runs[-1][1].append(parts[1])
        elif parts:
            runs.append((parts[0], [parts[1]]))
        else:
            runs.append(("", []))
    return runs


def guess_pattern(values: Sequence[str]) -> str | None:
    """The brace pattern the shell expanded into `values` (one numeric range), or None."""
    skeletons = {DIGITS.sub("#", v) for v in values}
    numbers = [DIGITS.findall(v) for v in values]
    if len(skeletons) != 1 or len({len(n) for n in numbers}) != 1:
        return None
    varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
    if len(varying) != 1:
        return None
    i = varying[0]
    first, last = numbers[0][i], numbers[-1][i]
    spans = list(DIGITS.finditer(values[0]))
    return values[0][:spans[i].start()] + f"{{{first}..{last}}}" + values[0][spans[i].end():]


def refuse_repeated_keys(args: Sequence[str]) -> None:
    """Raise `RunConfigError` when a key is given several times in a row (a shell-expanded brace pattern).

    Only consecutive repeats of different values: `base args ... key=other` (a later override winning) stays
    Hydra's rule, and so does one value repeated (Lightning's rank launcher appends `hydra.run.dir="<dir>"` to
    a command that may end with `hydra.run.dir=<dir>`)."""
    for key, values in _runs(args):
        if len({v.strip("'\"") for v in values}) > 1:
            pattern = guess_pattern(values) or values[0] + " ... " + values[-1]
            raise RunConfigError(f"{key} given {len(values)} times: quote the brace pattern (unquoted, the shell "
                                 f"expands it into one override per shard): '{key}={pattern}'")


def prepare_overrides(args: Sequence[str]) -> list[str]:
    """The command line's arguments ready for Hydra: repeated keys refused, brace ranges quoted."""
    refuse_repeated_keys(args)
    return [quote_brace_ranges(arg) for arg in args]
