"""Error taxonomy: capture, categorize, explain."""

from supervisor.errors.report import ErrorReport, Stage, qualified_name

__all__ = ["ErrorReport", "Stage", "qualified_name"]
