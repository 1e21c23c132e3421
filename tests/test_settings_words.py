"""Settings and option mistakes in plain words: a mistyped setting is named with the nearest
known one, unknown GENVISOR_* variables are warned about, validation messages carry no library
prefix and give the nearest valid values, and `--help` shows the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.cli.main import main
from supervisor.core.exceptions import ConfigError
from supervisor.core.settings import UnknownSetting, load_settings, unknown_environment
from supervisor.errors.validation_words import plain_field_message


def test_a_mistyped_setting_says_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("prot = 9000\n")
    with pytest.raises(UnknownSetting) as raised:
        load_settings(config)
    assert str(raised.value) == f"unknown setting prot in {config} — did you mean port?"
    assert isinstance(raised.value, ConfigError)  # still a configuration error (exit 2)
    config.write_text("zzzz = 1\n")
    with pytest.raises(UnknownSetting, match="`genvisor docs` lists every setting"):
        load_settings(config)


def test_a_bad_value_has_no_library_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENVISOR_ALLOWED_ORIGINS", '["x"]')
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "Value error" not in str(raised.value)
    assert "origin 'x' must start with http://" in str(raised.value)
    monkeypatch.delenv("GENVISOR_ALLOWED_ORIGINS")
    monkeypatch.setenv("GENVISOR_DTYPE", "flaot16")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "Input should be" not in str(raised.value)
    assert "did you mean float16?" in str(raised.value)


def test_unknown_genvisor_variables_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    warnings = unknown_environment(
        {"GENVISOR_PROT": "9000", "GENVISOR_PORT": "1", "GENVISOR_URL": "x", "PATH": "/bin"}
    )
    assert warnings == [
        "GENVISOR_PROT is not a genvisor setting and is ignored — did you mean GENVISOR_PORT?"
    ]
    assert unknown_environment({"GENVISOR_ULR": "x"})[0].endswith("did you mean GENVISOR_URL?")
    monkeypatch.setenv("GENVISOR_PROT", "9000")
    assert main(["explain", "--json", "CUDA out of memory"]) == 0
    assert "genvisor: warning: GENVISOR_PROT is not a genvisor setting" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("message", "value", "words"),
    [
        ("Input should be a multiple of 16", 33, "must be a multiple of 16 (nearest: 32 or 48)"),
        ("Input should be a multiple of 16", 8, "must be a multiple of 16 (nearest: 16)"),
        (
            "Value error, must be 4k+1 (1, 5, 9, ..., 17, 33, 81), got 6",
            6,
            "must be 4k+1 (1, 5, 9, ..., 17, 33, 81), got 6 (nearest: 5 or 9)",
        ),
        ("Input should be greater than or equal to 1", 0, "must be at least 1"),
        ("Extra inputs are not permitted", 6, "is not a known field"),
        ("width 40 must be a multiple of 32 and at most 1280", 40, None),
    ],
)
def test_validation_messages_in_plain_words(message: str, value: int, words: str | None) -> None:
    said = plain_field_message(message, value)
    assert "Value error" not in said
    assert "Input should" not in said
    if words is None:
        assert said.endswith("(nearest: 32 or 64)")
    else:
        assert said == words


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--width WIDTH width in pixels (a multiple of 16) (default: the model's own; 32 for" in (
        text
    )
    assert "(default: the model's own" in text.split("--frames FRAMES")[1]
    with pytest.raises(SystemExit):
        main(["models", "make-tiny", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "same seed, same files) (default: 0)" in text


def test_a_long_digit_string_is_not_read_as_a_number() -> None:
    # A client's 20,000-digit string (the API's fuzzer sent one as a too-long prompt): Python
    # refuses to convert it, which was a 500 before.
    digits = "0" * 20_000
    message = plain_field_message("String should have at most 4000 characters", digits)
    assert message == "String should have at most 4000 characters"
    assert plain_field_message("Input should be a multiple of 16", "9" * 30).endswith("16")
