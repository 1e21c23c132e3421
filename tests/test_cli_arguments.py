"""Number options of the CLI: a bad value is one line naming the option and what is allowed."""

from __future__ import annotations

import argparse

import pytest

from supervisor.cli.argument_types import whole_number
from supervisor.cli.main import main


def test_whole_number_names_the_bound_and_the_unit() -> None:
    assert whole_number(0)("0") == 0
    assert whole_number(1, unit="MB")("490") == 490
    for bad in ("-3", "abc", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"whole number of MB of at least 1"):
            whole_number(1, unit="MB")(bad)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["events", "--limit", "-1"], "argument --limit: must be a whole number of at least 0"),
        (["models", "make-tiny", "--weights-mb", "0"], "argument --weights-mb: must be a whole"),
    ],
)
def test_a_bad_number_is_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert words in err
