"""Error taxonomy: capture (ErrorReport), categorize (Categorizer), explain (UserError).

Importing this package never imports torch, diffusers or huggingface_hub: exception classes
are matched by their qualified names, which the report carries as strings.
"""

from supervisor.errors.catalog import MessageCatalog, default_catalog
from supervisor.errors.categories import (
    CODE_SPECS,
    WORKER_CRASHED_TYPE,
    WORKER_HUNG_TYPE,
    Categorization,
    CategorizationContext,
    Category,
    CodeSpec,
    ErrorCode,
    Severity,
)
from supervisor.errors.categorizer import Categorizer, default_categorizer
from supervisor.errors.report import ErrorReport, Stage, qualified_name
from supervisor.errors.traceback_text import (
    extract_facts,
    format_bytes,
    last_exception_text,
    report_from_text,
)
from supervisor.errors.user_error import TechnicalDetails, UserError, explain

__all__ = [
    "CODE_SPECS",
    "WORKER_CRASHED_TYPE",
    "WORKER_HUNG_TYPE",
    "Categorization",
    "CategorizationContext",
    "Categorizer",
    "Category",
    "CodeSpec",
    "ErrorCode",
    "ErrorReport",
    "MessageCatalog",
    "Severity",
    "Stage",
    "TechnicalDetails",
    "UserError",
    "default_catalog",
    "default_categorizer",
    "explain",
    "extract_facts",
    "format_bytes",
    "last_exception_text",
    "qualified_name",
    "report_from_text",
]
