"""The edge checks as pure functions: bearer tokens, constant-time comparison, Origins."""

from __future__ import annotations

import pytest

from supervisor.api.security import bearer_token, check_exposure, origin_allowed, token_valid
from supervisor.core.exceptions import ConfigError
from supervisor.core.settings import load_settings

TOKEN = "a-token-of-twenty-chars"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer ", None),
        ("", None),
        ("Bearerabc", None),
    ],
)
def test_bearer_token_is_read_from_the_authorization_header(
    header: str, expected: str | None
) -> None:
    assert bearer_token({"authorization": header}) == expected


def test_token_valid_only_with_the_exact_token() -> None:
    open_settings = load_settings(overrides={"api_token": None})
    assert token_valid(open_settings, None)
    guarded = load_settings(overrides={"api_token": TOKEN})
    assert token_valid(guarded, TOKEN)
    assert not token_valid(guarded, None)
    assert not token_valid(guarded, TOKEN[:-1])
    assert not token_valid(guarded, TOKEN + "x")
    assert not token_valid(guarded, "")


def test_exposure_without_a_token_is_refused_at_start() -> None:
    with pytest.raises(ConfigError) as refused:
        check_exposure(load_settings(overrides={"host": "0.0.0.0", "api_token": None}))
    assert refused.value.key == "api_token"
    check_exposure(load_settings(overrides={"host": "0.0.0.0", "api_token": TOKEN}))
    check_exposure(load_settings(overrides={"host": "127.0.0.1", "api_token": None}))


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser: the token guards it
        ("http://127.0.0.1:8765", True),  # the page the server itself serves
        ("HTTP://127.0.0.1:8765", True),  # scheme and host compare case-blind
        ("http://127.0.0.1:8765/admin", False),  # a path is not an Origin
        ("http://localhost:8765", False),  # another origin, even if it resolves here
        ("http://evil.example", False),
        ("null", False),
        ("http://[::1", False),
        ("http://a:99999", False),
        ("http://127.0.0.1:8765.evil.example", False),
        ("https://app.example", True),  # configured
        ("https://app.example:443", True),  # default port spelled out
        ("wss://app.example", True),  # ws(s) counts as http(s)
        ("https://app.example.evil", False),
        ("ftp://app.example", False),
    ],
)
def test_origin_allowed(origin: str | None, allowed: bool) -> None:
    assert (
        origin_allowed(
            origin, host_header="127.0.0.1:8765", scheme="http", allowed=["https://app.example"]
        )
        is allowed
    )
