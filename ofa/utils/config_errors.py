"""One clean line instead of a traceback for the errors that end a run before (or instead of) training.

- `exit_on_config_error`: a bad config (typo'd key, wrong type, unknown group option). Hydra prints
  composition errors over several lines and exits with 1; this makes them propagate (HYDRA_FULL_ERROR=1
  inside the block), prints `config error: ...` once and exits with 2.
- `exit_on_fault`: the run's own checks (`RunConfigError`: missing shards, impossible model/task/tokenizer
  combinations, `ckpt_path`, out-of-range values from the config dataclasses' `__post_init__`), unreadable,
  unsafe or wrong-sized checkpoints (`CheckpointError`), a run stopped by non-finite losses
  (`NonFiniteError`), and data errors (`DataError`, or any exception a DataLoader worker raised: the
  loader re-raises it with the worker's whole traceback as its message; its last line is printed).
Errors that are not about the config, the checkpoints or the data keep their full traceback.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import ContextDecorator, contextmanager

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from ofa.errors import RunConfigError
from ofa.safe_load import CheckpointError

CONFIG_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException,
                 OmegaConfBaseException)
EXIT_CODE = 2
WORKER_ERROR = re.compile(r"^Caught (\w+) in (DataLoader worker process \d+)")


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


def worker_error(exc: BaseException) -> str | None:
    """For an exception a DataLoader worker raised (re-raised by the loader as `Caught X in DataLoader worker
    process N.` + the worker's traceback): `X: <its original message> (DataLoader worker process N)` on one
    line; None for any other exception."""
    text = str(exc)
    found = WORKER_ERROR.match(text)
    if not found:
        return None
    last = [ln for ln in text.splitlines() if ln.strip()][-1]  # `module.X: message`, the traceback's end
    message = re.sub(r"^[\w.]*?(\w+): ", r"\1: ", last.strip(), count=1).removeprefix("DataError: ")
    return f"{message} ({found.group(2)})"


def data_error(exc: BaseException) -> str | None:
    """The one line for a data error (`DataError` in this process, or anything from a loader worker)."""
    from ofa.datamodules.pipeline import DataError

    from_worker = worker_error(exc)
    if from_worker is not None:
        return from_worker
    return str(exc) if isinstance(exc, DataError) else None


class _ExitOnFault(ContextDecorator):
    """`exit_on_fault()`: a class rather than a generator, so that a function it decorates pickles (the
    hydra-submitit-launcher ships `train` to its jobs with cloudpickle)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, err: BaseException | None, tb: object) -> bool:
        from ofa.lit_module import NonFiniteError  # here, so the config-error helpers import no model code

        if err is None or not isinstance(err, Exception):
            return False
        if isinstance(err, RunConfigError):
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(EXIT_CODE)
        if isinstance(err, CheckpointError):
            print(f"checkpoint error: {err}", file=sys.stderr)
            sys.exit(EXIT_CODE)
        if isinstance(err, NonFiniteError):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(3)
        line = data_error(err)  # only data errors end here; anything else is re-raised as it was
        if line is None:
            return False
        print(f"data error: {line}", file=sys.stderr)
        sys.exit(3)


def exit_on_fault() -> _ExitOnFault:
    """`config error: ...` / `checkpoint error: ...` (exit 2), `error: ...` / `data error: ...` (exit 3) on
    one line."""
    return _ExitOnFault()
