"""`exit_on_fault`: the run's own errors end on one line with their exit code, and a function it decorates pickles
(the hydra-submitit-launcher ships ofa.train's task function to its jobs with cloudpickle)."""
from __future__ import annotations

import cloudpickle
import pytest

from ofa.errors import RunConfigError
from ofa.utils.config_errors import exit_on_fault


@exit_on_fault()
def refuse(value: int) -> int:
    if value < 0:
        raise RunConfigError(f"value={value}: must be >= 0")
    return value


def test_a_decorated_function_pickles_and_still_ends_on_one_line(capsys: pytest.CaptureFixture) -> None:
    again = cloudpickle.loads(cloudpickle.dumps(refuse))
    assert again(3) == 3
    with pytest.raises(SystemExit) as info:
        again(-1)
    assert info.value.code == 2 and capsys.readouterr().err == "config error: value=-1: must be >= 0\n"


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), exit_on_fault():
        raise KeyError("x")
    with pytest.raises(KeyboardInterrupt), exit_on_fault():
        raise KeyboardInterrupt
