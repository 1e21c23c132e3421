"""Reading error text: tracebacks as people paste them, and the facts a message states.

`last_exception_text` finds the final `Type: message` block of a traceback (chained tracebacks
end with the one that was actually raised); `report_from_text` turns any such text into an
ErrorReport, keeping the full text as its traceback.

`extract_facts` reads what an error's own words say: how much memory was asked for and was
free, which file, which repository, which resolution. The facts feed the fragmentation check
and the message templates ("needs ~2.3 GiB, 1.1 GiB free on GPU 0"). Each regex runs only when
a cheap literal says it can match, so extraction costs little.
"""

from __future__ import annotations

import errno as errno_module
import re

from supervisor.errors.report import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS, ErrorReport

__all__ = [
    "FRAGMENTATION_MIN_SHARE",
    "extract_facts",
    "format_bytes",
    "is_fragmented",
    "last_exception_text",
    "parse_size",
    "report_from_text",
]

# A line that starts an exception: `pkg.mod.SomeError: message`, `SomeError`, or
# `SomeError: ` with the message on following lines. Column 0 only: frames are indented.
_EXC_LINE = re.compile(
    r"^(?P<type>(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Warning|Interrupt|Exit|Fault"
    r"|Timeout|Killed|Crashed|Hung|Buffer|TooLarge|Enabled|Failure))(?::(?P<rest>.*))?$"
)
_NOT_AN_EXCEPTION = ("Traceback (most recent call last)",)
_CHAIN_MARKERS = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")
# The prefix torch.distributed (torchrun) puts on each line of a rank's output: `[rank0]: `,
# older `[default0]:`. Without it the lines are a plain traceback.
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]: ?", re.MULTILINE)
_MAX_BLOCK_LINES = 40


def last_exception_text(text: str) -> str:
    """The last exception's `Type: message` block of a traceback; the stripped text itself when
    it has no recognizable exception line (a bare message like `CUDA error: out of memory`)."""
    lines = text.strip().splitlines()
    if not lines:
        return ""
    start = None
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if line.startswith(_NOT_AN_EXCEPTION) or line.startswith(_CHAIN_MARKERS):
            break
        if _EXC_LINE.match(line):
            start = index
            break
    if start is None:
        # No exception line: a message alone, or a traceback cut before its last line. Keep the
        # tail after the last frame, which is where a raising frame's text would be.
        tail = _after_last_frame(lines)
        return "\n".join(tail).strip()
    block = lines[start : start + _MAX_BLOCK_LINES]
    return "\n".join(line for line in block).strip()


def report_from_text(text: str, **fields: object) -> ErrorReport:
    """An ErrorReport from pasted error text; `[Errno N]` in the message becomes its errno."""
    if "]:" in text:
        text = _RANK_PREFIX.sub("", text)
    block = last_exception_text(text)
    base = ErrorReport.from_text(block[:MAX_MESSAGE_CHARS] or text.strip()[:MAX_MESSAGE_CHARS])
    number = base.errno
    if number is None:
        found = _ERRNO_IN_TEXT.search(base.message)
        number = int(found.group(1)) if found else None
    values: dict[str, object] = {
        "exc_type": base.exc_type,
        "message": base.message,
        "errno": number,
        "errno_name": errno_module.errorcode.get(number) if number is not None else None,
        "traceback": text[-MAX_TRACEBACK_CHARS:] if "\n" in text.strip() else "",
    }
    values.update(fields)
    return ErrorReport.model_validate(values)


def _after_last_frame(lines: list[str]) -> list[str]:
    for index in range(len(lines) - 1, -1, -1):
        stripped = lines[index].lstrip()
        if stripped.startswith('File "') and lines[index] != stripped:
            return [
                ln for ln in lines[index + 1 :] if ln.strip() and not ln.startswith(" ")
            ] or lines
    return lines


# Reserved-but-unallocated memory counts as fragmentation only when it could have held the
# request and is a noticeable share of the device (not a few MiB of allocator slack).
FRAGMENTATION_MIN_SHARE = 0.05
_FRAGMENTATION_MIN_BYTES_WITHOUT_TOTAL = 512 * 1024**2

_SIZE = r"(\d+(?:\.\d+)?) ?(bytes|[kmgt]i?b|b)"
_UNITS = {
    "b": 0,
    "bytes": 0,
    "kb": 1,
    "kib": 1,
    "mb": 2,
    "mib": 2,
    "gb": 3,
    "gib": 3,
    "tb": 4,
    "tib": 4,
}

_TRIED = re.compile(r"tried to allocate " + _SIZE)
_TOTAL_NEW = re.compile(r"gpu (\d+) has a total capac\w* of " + _SIZE)
_FREE_NEW = re.compile(r"of which " + _SIZE + r" is free")
_RESERVED_UNALLOC = re.compile(_SIZE + r" is reserved by pytorch but unallocated")
# Under torch.cuda.set_per_process_memory_fraction (genvisor's device_memory_limit on a GPU)
# torch names the process's allowance; the device's own free memory is then beside the point.
_ALLOWED = re.compile(_SIZE + r" allowed;")
_BY_PYTORCH = re.compile(r"of the allocated memory " + _SIZE + r" is allocated by pytorch")
_OLD = re.compile(
    r"\(gpu\s+(\d+); " + _SIZE + r" total capacity; " + _SIZE + r" already allocated; "
    + _SIZE + r" free"
)  # fmt: skip
_MPS = re.compile(
    r"mps allocated: " + _SIZE + r", other allocations: " + _SIZE + r", max allowed: " + _SIZE
)
_CPU_BYTES = re.compile(r"you tried to allocate (\d+) bytes")
_FILE_PATH = re.compile(r"file path: (.+)")
_ERRNO_PATH = re.compile(r"\[errno \d+\][^:\n]*: '([^'\n]+)'")
_IN_DIRECTORY = re.compile(r"found in directory ([^\s]+?)\.?(?:\s|$)")
_REPO_RESTRICTED = re.compile(r"access to model ([\w.\-]+/[\w.\-]+) is restricted")
_REPO_URL = re.compile(r"huggingface\.co/(?:api/models/)?([\w.\-]+/[\w.\-]+)/")
_URL = re.compile(r"for url: (https?://[^\s)]+)")
_HEIGHT_WIDTH = re.compile(r"divisible by (\d+) but are (\d+) and (\d+)")
_MULTIPLE = re.compile(r"(?:divisible by|multiple of) (\d+)")
# genvisor's own pre-flight refusal (supervisor/recovery/preflight.py, Refusal.message).
_PREFLIGHT = re.compile(
    r"needs ~" + _SIZE + r" (?:as asked|even at the last rung \(([a-z0-9_]+)\)), peaking at "
    r"([a-z_]+); " + _SIZE + r" free minus an? " + _SIZE + r" reserve leaves " + _SIZE
)
# ... and what it found would fit (the size of the same aspect; the frames at the size asked).
_FITS_SIZE = re.compile(r"it would fit at (\d+)x(\d+)")
_FITS_FRAMES = re.compile(r"it would fit (?:at \d+x\d+ or )?with (\d+) frames")


def parse_size(number: str, unit: str) -> int:
    return int(float(number) * 1024 ** _UNITS[unit])


def format_bytes(value: int | float) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def extract_facts(message: str) -> dict[str, object]:
    """Facts stated by `message` (case-insensitive). Keys: requested_bytes, free_bytes,
    total_bytes, reserved_unallocated_bytes, device_index, path, repo_id, url, height, width,
    multiple; of a pre-flight refusal: estimate_bytes, peak_stage, last_rung, budget_free_bytes,
    reserve_bytes, available_bytes, and what it found would fit: fits_width, fits_height,
    fits_frames."""
    low = message.lower()
    facts: dict[str, object] = {}
    if "allocate" in low:
        _memory_facts(low, facts)
    if "needs ~" in low and " reserve leaves " in low:
        _preflight_facts(low, facts)
    if "file path: " in low:
        found = _FILE_PATH.search(message, low.index("file path: "))
        if found:
            facts["path"] = found.group(1).strip()
    if "path" not in facts and "[errno" in low:
        found = _ERRNO_PATH.search(low)
        if found:
            start = found.start(1)
            facts["path"] = message[start : found.end(1)]
    if "path" not in facts and "found in directory" in low:
        found = _IN_DIRECTORY.search(low)
        if found:
            facts["path"] = message[found.start(1) : found.end(1)]
    if "huggingface.co" in low or "is restricted" in low:
        found = _REPO_RESTRICTED.search(low) or _REPO_URL.search(low)
        if found:
            facts["repo_id"] = message[found.start(1) : found.end(1)]
        url = _URL.search(message) or _URL.search(low)
        if url:
            facts["url"] = url.group(1).rstrip(".")
    if "divisible by" in low:
        found = _HEIGHT_WIDTH.search(low)
        if found:
            facts["multiple"] = int(found.group(1))
            facts["height"] = int(found.group(2))
            facts["width"] = int(found.group(3))
    if "multiple" not in facts and ("divisible by" in low or "multiple of" in low):
        found = _MULTIPLE.search(low)
        if found:
            facts["multiple"] = int(found.group(1))
    return facts


def is_fragmented(facts: dict[str, object]) -> bool:
    """True when the allocator held enough free-but-reserved memory for the failed request."""
    unallocated = facts.get("reserved_unallocated_bytes")
    requested = facts.get("requested_bytes")
    if not isinstance(unallocated, int) or not isinstance(requested, int):
        return False
    if unallocated < requested:
        return False
    total = facts.get("total_bytes")
    if isinstance(total, int) and total > 0:
        return unallocated >= FRAGMENTATION_MIN_SHARE * total
    return unallocated >= _FRAGMENTATION_MIN_BYTES_WITHOUT_TOTAL


def _size_of(pattern: re.Pattern[str], low: str) -> int | None:
    found = pattern.search(low)
    return parse_size(found.group(1), found.group(2)) if found is not None else None


def _preflight_facts(low: str, facts: dict[str, object]) -> None:
    """The numbers of a pre-flight refusal: the estimate, the stage it peaks at, what the
    budget holds (free less the reserve) and, when the whole ladder was walked, its last rung."""
    found = _PREFLIGHT.search(low)
    if found is None:
        return
    facts["estimate_bytes"] = parse_size(found.group(1), found.group(2))
    if found.group(3):
        facts["last_rung"] = found.group(3)
    facts["peak_stage"] = found.group(4)
    facts["budget_free_bytes"] = parse_size(found.group(5), found.group(6))
    facts["reserve_bytes"] = parse_size(found.group(7), found.group(8))
    facts["available_bytes"] = parse_size(found.group(9), found.group(10))
    if (size := _FITS_SIZE.search(low)) is not None:
        facts["fits_width"], facts["fits_height"] = int(size.group(1)), int(size.group(2))
    if (frames := _FITS_FRAMES.search(low)) is not None:
        facts["fits_frames"] = int(frames.group(1))


def _memory_facts(low: str, facts: dict[str, object]) -> None:
    if (found := _CPU_BYTES.search(low)) is not None:
        facts["requested_bytes"] = int(found.group(1))
        return
    if (found := _TRIED.search(low)) is not None:
        facts["requested_bytes"] = parse_size(found.group(1), found.group(2))
    if (found := _TOTAL_NEW.search(low)) is not None:
        facts["device_index"] = int(found.group(1))
        facts["total_bytes"] = parse_size(found.group(2), found.group(3))
    if (found := _FREE_NEW.search(low)) is not None:
        facts["free_bytes"] = parse_size(found.group(1), found.group(2))
    if (found := _RESERVED_UNALLOC.search(low)) is not None:
        facts["reserved_unallocated_bytes"] = parse_size(found.group(1), found.group(2))
    if (found := _OLD.search(low)) is not None:
        facts["device_index"] = int(found.group(1))
        facts["total_bytes"] = parse_size(found.group(2), found.group(3))
        facts["free_bytes"] = parse_size(found.group(6), found.group(7))
    if (found := _ALLOWED.search(low)) is not None:
        limit = parse_size(found.group(1), found.group(2))
        allocated = _size_of(_BY_PYTORCH, low) or 0
        reserved = _size_of(_RESERVED_UNALLOC, low) or 0
        facts["memory_limit_bytes"] = limit
        facts["total_bytes"] = limit
        facts["free_bytes"] = max(limit - allocated - reserved, 0)
    if (found := _MPS.search(low)) is not None:
        allocated = parse_size(found.group(1), found.group(2))
        other = parse_size(found.group(3), found.group(4))
        limit = parse_size(found.group(5), found.group(6))
        facts["total_bytes"] = limit
        facts["free_bytes"] = max(limit - allocated - other, 0)
