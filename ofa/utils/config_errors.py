"""One clean line instead of a traceback for the errors that end a run before (or instead of) training.

- `exit_on_config_error`: a bad config (typo'd key, wrong type, unknown group option). Hydra prints
  composition errors over several lines and exits with 1; this makes them propagate (HYDRA_FULL_ERROR=1
  inside the block), prints `config error: ...` once and exits with 2.
- `exit_on_fault`: the run's own checks (`RunConfigError`: missing shards, impossible model/task/tokenizer
  combinations, `ckpt_path`), unreadable or unsafe checkpoints (`CheckpointError`), and a run stopped by
  non-finite losses (`NonFiniteError`).
Errors that are not about the config or the checkpoints keep their full traceback.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from ofa.errors import RunConfigError
from ofa.safe_load import CheckpointError

CONFIG_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException,
                 OmegaConfBaseException)
EXIT_CODE = 2


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _missing_option(exc: MissingConfigException) -> str:
    """`Could not find 'model/ofa_nan'` + the group's valid choices (hidden `_`/schema entries dropped)."""
    text = str(exc).split("Config search path:")[0]
    first = text.strip().splitlines()[0]
    first = re.sub(r"^In '[^']*': ", "", first)
    options = [o.strip() for o in re.findall(r"^\t(.+)$", text, flags=re.M)]
    options = [o for o in options if not o.startswith("_")]
    group = re.search(r"Available options in '([^']+)'", text)
    return f"{first}; valid choices for '{group.group(1)}': {', '.join(options)}" if group else first


def format_config_error(exc: BaseException) -> str:
    """The most specific message of the exception chain, on one line, with the full key when known."""
    for err in _chain(exc):
        if isinstance(err, MissingConfigException):
            return _missing_option(err)
    chain = _chain(exc)
    leaf = next((e for e in chain if isinstance(e, OmegaConfBaseException)), chain[0])  # outermost: formatted
    lines = [ln.strip() for ln in str(leaf).strip().splitlines() if ln.strip()]
    message = lines[0] if lines else type(leaf).__name__
    full_key = getattr(leaf, "full_key", None) or next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    if full_key and full_key not in message:
        message += f" (key: {full_key})"
    return message


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Run Hydra's entry point; a config error prints `config error: <one line>` and exits with code 2."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of Hydra's report
    try:
        yield
    except CONFIG_ERRORS as exc:
        print(f"config error: {format_config_error(exc)}", file=sys.stderr)
        sys.exit(EXIT_CODE)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


@contextmanager
def exit_on_fault() -> Iterator[None]:
    """`config error: ...` / `checkpoint error: ...` (exit 2) or `error: ...` (exit 3) on one line."""
    from ofa.lit_module import NonFiniteError  # here, so the config-error helpers import no model code

    try:
        yield
    except RunConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(EXIT_CODE)
    except CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        sys.exit(EXIT_CODE)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
