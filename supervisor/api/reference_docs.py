"""Reference sections of the README, generated from the configuration they describe.

The error code catalog comes from `config/messages.toml` (with each code's category, severity
and whether it is recoverable), the recovery ladder from `config/recovery.toml`, the settings
from `Settings` and `config/default.toml`. `genvisor docs --write README.md` rewrites the blocks
between `<!-- BEGIN generated:NAME -->` and `<!-- END generated:NAME -->`; a test checks that
the README in the repository is current.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

from supervisor.core.settings import Settings, config_path
from supervisor.errors import CODE_SPECS, ErrorCode, default_catalog

__all__ = ["SECTIONS", "codes_markdown", "ladder_markdown", "rewrite", "settings_markdown"]


def _first(template: str | list[str]) -> str:
    return template if isinstance(template, str) else template[-1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def codes_markdown() -> str:
    catalog = default_catalog()
    rows = [
        "| code | category | severity | recoverable | title | first suggestion |",
        "|---|---|---|---|---|---|",
    ]
    for code in sorted(ErrorCode, key=lambda c: c.value):
        entry = catalog.entry(code)
        spec = CODE_SPECS[code]
        first = _first(entry.suggestions[0].text) if entry.suggestions else ""
        rows.append(
            f"| `{code.value}` | {code.category.value} | {spec.severity.value} | "
            f"{'yes' if spec.recoverable else 'no'} | {_cell(_first(entry.title))} | "
            f"{_cell(first)} |"
        )
    return "\n".join(rows)


def ladder_markdown() -> str:
    with config_path("recovery.toml").open("rb") as f:
        rungs = tomllib.load(f)["rungs"]
    rows = [
        "| # | rung | devices | tried after an OOM at | changes the video | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for i, rung in enumerate(rungs, 1):
        changes = {**rung.get("options", {}), **rung.get("params", {})}
        what = ", ".join(f"`{k} = {v}`" for k, v in changes.items()) or "retry"
        stages = ", ".join(rung.get("stages", ["any stage"]))
        rows.append(
            f"| {i} | `{rung['id']}` — {_cell(rung['description'])} | "
            f"{', '.join(rung['devices'])} | {stages} | "
            f"{'yes' if rung['changes_output'] else 'no'} | {what} |"
        )
    return "\n".join(rows)


def _default_comments() -> dict[str, str]:
    comments: dict[str, str] = {}
    for line in config_path("default.toml").read_text().splitlines():
        m = re.match(r"^([a-z_]+)\s*=\s*(.*?)\s*#\s*(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(3)
    return comments


def settings_markdown() -> str:
    comments = _default_comments()
    rows = ["| setting (TOML key) | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default: object = "(unset)" if field.default is None else field.default
        if field.default_factory is not None:
            default = field.default_factory()  # type: ignore[call-arg]
        if name == "home":
            default = "~/.genvisor"
        shown = f"`{default!r}`" if not isinstance(default, str) else f"`{default}`"
        meaning = comments.get(name) or field.description or ""
        rows.append(f"| `{name}` | `GENVISOR_{name.upper()}` | {shown} | {_cell(meaning)} |")
    return "\n".join(rows)


SECTIONS: dict[str, Callable[[], str]] = {
    "codes": codes_markdown,
    "ladder": ladder_markdown,
    "settings": settings_markdown,
}


def rewrite(text: str) -> str:
    """`text` with every generated block replaced by its current content."""
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN generated:{name} -->\n).*?(<!-- END generated:{name} -->)", re.S
        )
        text = pattern.sub(_block(make()), text)
    return text


def _block(body: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m.group(1) + body + "\n" + m.group(2)


def write(path: Path) -> bool:
    """Rewrite the file's generated blocks; True when something changed."""
    old = path.read_text(encoding="utf-8")
    new = rewrite(old)
    if new != old:
        path.write_text(new, encoding="utf-8")
    return new != old
