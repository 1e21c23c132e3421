"""UserError: what a person sees. Built by `explain` from a report, its categorization and the
facts known about the job, rendered as JSON (pydantic) and as HTML in which every string that
came from a user or an error is escaped.

Facts precedence: what the error itself says (sizes, paths in its message) wins over the
report's context, which wins over facts passed by the caller. A caller's context never
rewrites what the error stated.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from supervisor.errors.catalog import MAX_SUGGESTIONS, MessageCatalog, default_catalog, render
from supervisor.errors.categories import (
    Categorization,
    CategorizationContext,
    Category,
    ErrorCode,
    Severity,
)
from supervisor.errors.categorizer import default_categorizer
from supervisor.errors.report import ErrorReport, Stage
from supervisor.errors.traceback_text import extract_facts, format_bytes

__all__ = ["TechnicalDetails", "UserError", "explain"]

_BYTE_FACTS = {
    "requested_bytes": "required",
    "free_bytes": "free",
    "total_bytes": "total",
    "memory_limit_bytes": "memory_limit",
    # A pre-flight refusal's numbers (traceback_text._preflight_facts).
    "estimate_bytes": "estimate",
    "available_bytes": "available",
    "budget_free_bytes": "budget_free",
    "reserve_bytes": "reserve",
}
# Memory savings the VRAM ladder applies itself: after a refusal that walked the whole ladder
# they were tried already, so they are not suggested.
_LADDER_SUGGESTIONS = ("enable_vae_tiling", "enable_cpu_offload")
# A size suggested after a refusal: sides are multiples of this (every Wan model's multiple).
_FIT_MULTIPLE = 32


class TechnicalDetails(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    stage: Stage
    device: str | None
    traceback: str
    rule: str = ""


class UserError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    category: Category
    severity: Severity
    title: str
    message: str
    suggestions: list[str] = Field(default_factory=list, max_length=MAX_SUGGESTIONS)
    applied_recovery: list[str] = Field(default_factory=list)
    technical: TechnicalDetails
    job_id: str | None = None
    ts: float = Field(default_factory=time.time)

    def to_html(self) -> str:
        """A self-contained fragment; every value is escaped (quotes included)."""
        e = _escape
        parts = [
            f'<div class="genvisor-error" data-code="{e(self.code)}" '
            f'data-category="{e(self.category)}" data-severity="{e(self.severity)}">',
            f"<h3>{e(self.title)}</h3>",
            f"<p>{e(self.message)}</p>",
        ]
        if self.suggestions:
            items = "".join(f"<li>{e(s)}</li>" for s in self.suggestions)
            parts.append(f'<ul class="suggestions">{items}</ul>')
        if self.applied_recovery:
            items = "".join(f"<li>{e(s)}</li>" for s in self.applied_recovery)
            parts.append(f'<ul class="applied-recovery">{items}</ul>')
        t = self.technical
        job = f"<dt>job</dt><dd>{e(self.job_id)}</dd>" if self.job_id else ""
        parts.append(
            "<details><summary>Technical details</summary><dl>"
            f"<dt>code</dt><dd>{e(self.code)}</dd>{job}"
            f"<dt>type</dt><dd>{e(t.type)}</dd><dt>stage</dt><dd>{e(t.stage)}</dd>"
            f"<dt>device</dt><dd>{e(t.device or '')}</dd></dl>"
            f"<pre>{e(t.message)}</pre><pre>{e(t.traceback)}</pre></details>"
        )
        parts.append("</div>")
        return "".join(parts)


def explain(
    report: ErrorReport,
    categorization: Categorization | None = None,
    *,
    facts: Mapping[str, object] | None = None,
    applied: Sequence[str] = (),
    catalog: MessageCatalog | None = None,
) -> UserError:
    """The user-facing message for `report`. `applied` names the recovery actions (suggestion
    ids) the system already carried out: they are reported, not suggested again."""
    verdict = categorization or default_categorizer().categorize(report)
    book = catalog or default_catalog()
    values = _template_values(report, verdict, facts or {})
    entry = book.entry(verdict.code)
    done = set(applied)
    if values.get("last_rung") is not None:
        done.update(_LADDER_SUGGESTIONS)
    # Pre-flight searched what fits (it found a size): fewer frames alone fit at no count, and
    # a suggestion with no number would send the person to try it for nothing.
    if "fits_width" in values and "fits_frames" not in values:
        done.add("fewer_frames")
    kind = CategorizationContext.from_report(report).device_kind
    stage = _suggestion_stage(report, values)
    suggestions = [
        render(s.text, values)
        for s in entry.suggestions
        if s.id not in done and s.fits(kind, stage)
    ]
    # One of genvisor's own exceptions knows the exact next step (the command to run) and the
    # specific reason: they replace the catalog's general words, which may not apply (a Hub
    # login for a model that is built locally).
    remedy, detail = report.context.get("remedy"), report.context.get("detail")
    if isinstance(remedy, str) and remedy:
        suggestions = [_sentence(remedy)]
    message = render(entry.message, values)
    if isinstance(detail, str) and detail:
        message = _sentence(detail)
    return UserError(
        code=verdict.code,
        category=verdict.category,
        severity=verdict.severity,
        title=render(entry.title, values),
        message=message,
        suggestions=suggestions[:MAX_SUGGESTIONS],
        applied_recovery=[book.done_text(action, values) for action in dict.fromkeys(applied)],
        technical=TechnicalDetails(
            type=report.exc_type,
            message=report.message,
            stage=report.stage,
            device=report.device,
            traceback=report.traceback,
            rule=verdict.rule,
        ),
        job_id=report.job_id,
        ts=report.ts,
    )


def _template_values(
    report: ErrorReport, verdict: Categorization, caller: Mapping[str, object]
) -> dict[str, object]:
    values: dict[str, object] = {k: v for k, v in caller.items() if v is not None}
    values.update({k: v for k, v in report.context.items() if v is not None})
    values.update(extract_facts(report.message))
    for key, name in _BYTE_FACTS.items():
        raw = values.get(key)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            values[name] = format_bytes(raw)
    _fitting_size(values)
    rung = values.get("last_rung")
    if isinstance(rung, str):
        values["last_rung"] = rung.replace("_", " ")
    values.setdefault("device", _device_label(values, report))
    if values.get("device") is None:
        values.pop("device")
    if report.http_status is not None:
        values.setdefault("status", report.http_status)
    if report.errno_name:
        values.setdefault("errno_name", report.errno_name)
    if report.exc_type:
        values.setdefault("type", report.exc_type)
    values.setdefault("stage", report.stage.value)
    values.setdefault("code", verdict.code.value)
    if values.get("model") is None and values.get("repo_id") is not None:
        values["model"] = values["repo_id"]
    return values


def _suggestion_stage(report: ErrorReport, values: Mapping[str, object]) -> Stage:
    """The stage suggestions are chosen for: a pre-flight refusal is reported at load (before
    anything ran), but what to change is what its estimate peaks at."""
    peak = values.get("peak_stage")
    if isinstance(peak, str):
        try:
            return Stage(peak)
        except ValueError:
            pass
    return report.stage


def _fitting_size(values: dict[str, object]) -> None:
    """After a pre-flight refusal: the largest resolution (same aspect) that could fit. Every
    term of the estimate is constant (weights, a VAE tile) or grows with the pixel count
    (activations, the decoded video), so it shrinks at most in proportion to the pixels: the
    refused size scaled by the budget's share of the estimate is an upper bound, not a promise.
    Nothing when the load itself does not fit (no size helps then) or when no size would."""
    estimate, available = values.get("estimate_bytes"), values.get("available_bytes")
    width, height = values.get("width"), values.get("height")
    if not (
        isinstance(estimate, int)
        and isinstance(available, int)
        and isinstance(width, int)
        and isinstance(height, int)
    ):
        return
    if values.get("peak_stage") == Stage.LOAD.value or estimate <= 0:
        return
    share = available / estimate
    if share >= 1:
        return
    side = math.sqrt(share)
    fit_w = round(width * side / _FIT_MULTIPLE) * _FIT_MULTIPLE
    fit_h = round(height * side / _FIT_MULTIPLE) * _FIT_MULTIPLE
    if fit_w >= _FIT_MULTIPLE and fit_h >= _FIT_MULTIPLE:
        values["fit_width"], values["fit_height"] = fit_w, fit_h


def _device_label(values: Mapping[str, object], report: ErrorReport) -> object:
    name = values.get("device_name")
    if name:
        return name
    index = values.get("device_index")
    if isinstance(index, int):
        return f"GPU {index}"
    return report.device


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)
