"""Operating-system error numbers: POSIX errno, Windows error codes, and the builtin exception
classes that imply one.

A number says what happened in every language: `[WinError 5] Zugriff verweigert` and
`[WinError 5] 拒绝访问` are the same refusal. This module reads the number from a report (a
captured `errno`) or from the text in each form libraries print it:

    [Errno 28] No space left on device          (Python's OSError)
    [WinError 32] The process cannot access ...  (Python's OSError on Windows)
    WindowsError: [Error 32] The process ...     (Python 2 on Windows)
    (os error 10054)                             (Rust's std::io::Error, e.g. tokenizers, hf-xet)
    ConnectionResetError(10054, 'An existing ...' (an exception's repr inside another message)
    OSError(30, 'Read-only file system')

Windows socket errors (WSA, 10000 and up) are Windows codes whatever form they come in.
"""

from __future__ import annotations

import errno as errno_module
import re

from supervisor.errors.categories import ErrorCode
from supervisor.errors.report import ErrorReport

__all__ = [
    "BUILTIN_OS_ERRNOS",
    "ERRNO_CODES",
    "WINERROR_CODES",
    "errno_of",
    "os_error_code",
]


def _errnos(*names: str) -> list[int]:
    return [getattr(errno_module, n) for n in names if hasattr(errno_module, n)]


ERRNO_CODES: dict[int, ErrorCode] = {
    **dict.fromkeys(_errnos("ENOSPC", "EDQUOT"), ErrorCode.FS_DISK_FULL),
    **dict.fromkeys(_errnos("EACCES", "EPERM"), ErrorCode.FS_PERMISSION),
    **dict.fromkeys(_errnos("EROFS"), ErrorCode.FS_READ_ONLY),
    **dict.fromkeys(_errnos("ENOENT"), ErrorCode.FS_NOT_FOUND),
    **dict.fromkeys(_errnos("EEXIST", "ENOTDIR", "EISDIR"), ErrorCode.FS_PATH_CONFLICT),
    **dict.fromkeys(_errnos("EMFILE", "ENFILE"), ErrorCode.SYSTEM_TOO_MANY_OPEN_FILES),
    **dict.fromkeys(_errnos("EIO"), ErrorCode.FS_IO_ERROR),
    **dict.fromkeys(_errnos("ENAMETOOLONG"), ErrorCode.FS_NAME_TOO_LONG),
    **dict.fromkeys(_errnos("EBUSY", "ETXTBSY"), ErrorCode.FS_IN_USE),
    **dict.fromkeys(_errnos("ENOMEM"), ErrorCode.SYSTEM_HOST_MEMORY),
    **dict.fromkeys(
        _errnos("ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "ENETDOWN", "EHOSTDOWN"),
        ErrorCode.NET_OFFLINE,
    ),
    **dict.fromkeys(_errnos("ECONNRESET", "ECONNABORTED"), ErrorCode.NET_CONNECTION_LOST),
    **dict.fromkeys(_errnos("ETIMEDOUT"), ErrorCode.NET_TIMEOUT),
}

# Windows system error codes and Winsock (WSA) codes, by number: the same in every UI language.
WINERROR_CODES: dict[int, ErrorCode] = {
    2: ErrorCode.FS_NOT_FOUND,  # ERROR_FILE_NOT_FOUND
    3: ErrorCode.FS_NOT_FOUND,  # ERROR_PATH_NOT_FOUND
    4: ErrorCode.SYSTEM_TOO_MANY_OPEN_FILES,  # ERROR_TOO_MANY_OPEN_FILES
    5: ErrorCode.FS_PERMISSION,  # ERROR_ACCESS_DENIED
    8: ErrorCode.SYSTEM_HOST_MEMORY,  # ERROR_NOT_ENOUGH_MEMORY
    14: ErrorCode.SYSTEM_HOST_MEMORY,  # ERROR_OUTOFMEMORY
    15: ErrorCode.FS_NOT_FOUND,  # ERROR_INVALID_DRIVE
    17: ErrorCode.FS_FAILED,  # ERROR_NOT_SAME_DEVICE (a move across drives)
    19: ErrorCode.FS_READ_ONLY,  # ERROR_WRITE_PROTECT
    21: ErrorCode.FS_IO_ERROR,  # ERROR_NOT_READY (the drive)
    23: ErrorCode.FS_IO_ERROR,  # ERROR_CRC (data error)
    32: ErrorCode.FS_IN_USE,  # ERROR_SHARING_VIOLATION
    33: ErrorCode.FS_IN_USE,  # ERROR_LOCK_VIOLATION
    39: ErrorCode.FS_DISK_FULL,  # ERROR_HANDLE_DISK_FULL
    53: ErrorCode.FS_NOT_FOUND,  # ERROR_BAD_NETPATH
    67: ErrorCode.FS_NOT_FOUND,  # ERROR_BAD_NET_NAME
    112: ErrorCode.FS_DISK_FULL,  # ERROR_DISK_FULL
    123: ErrorCode.FS_FAILED,  # ERROR_INVALID_NAME (a path's syntax)
    126: ErrorCode.CONFIG_MISSING_DEPENDENCY,  # ERROR_MOD_NOT_FOUND (a DLL)
    127: ErrorCode.CONFIG_MISSING_DEPENDENCY,  # ERROR_PROC_NOT_FOUND
    145: ErrorCode.FS_PATH_CONFLICT,  # ERROR_DIR_NOT_EMPTY
    193: ErrorCode.CONFIG_MISSING_DEPENDENCY,  # ERROR_BAD_EXE_FORMAT
    183: ErrorCode.FS_PATH_CONFLICT,  # ERROR_ALREADY_EXISTS
    206: ErrorCode.FS_NAME_TOO_LONG,  # ERROR_FILENAME_EXCED_RANGE
    267: ErrorCode.FS_PATH_CONFLICT,  # ERROR_DIRECTORY (the name is not a folder)
    1114: ErrorCode.CONFIG_MISSING_DEPENDENCY,  # ERROR_DLL_INIT_FAILED
    1117: ErrorCode.FS_IO_ERROR,  # ERROR_IO_DEVICE
    1392: ErrorCode.FS_IO_ERROR,  # ERROR_FILE_CORRUPT
    1393: ErrorCode.FS_IO_ERROR,  # ERROR_DISK_CORRUPT
    1224: ErrorCode.FS_IN_USE,  # ERROR_USER_MAPPED_FILE
    1314: ErrorCode.FS_PERMISSION,  # ERROR_PRIVILEGE_NOT_HELD (symlinks without dev mode)
    1450: ErrorCode.SYSTEM_RESOURCE_LIMIT,  # ERROR_NO_SYSTEM_RESOURCES
    1455: ErrorCode.SYSTEM_HOST_MEMORY,  # ERROR_COMMITMENT_LIMIT (paging file too small)
    1920: ErrorCode.FS_PERMISSION,  # ERROR_CANT_ACCESS_FILE
    # WSAEACCES: on a bind, a port Windows reserves (an excluded range) or another holds.
    10013: ErrorCode.CONFIG_PORT_IN_USE,
    10048: ErrorCode.CONFIG_PORT_IN_USE,  # WSAEADDRINUSE
    10050: ErrorCode.NET_OFFLINE,  # WSAENETDOWN
    10051: ErrorCode.NET_OFFLINE,  # WSAENETUNREACH
    10053: ErrorCode.NET_CONNECTION_LOST,  # WSAECONNABORTED
    10054: ErrorCode.NET_CONNECTION_LOST,  # WSAECONNRESET
    10060: ErrorCode.NET_TIMEOUT,  # WSAETIMEDOUT
    10061: ErrorCode.NET_OFFLINE,  # WSAECONNREFUSED
    10065: ErrorCode.NET_OFFLINE,  # WSAEHOSTUNREACH
    11001: ErrorCode.NET_OFFLINE,  # WSAHOST_NOT_FOUND
    11002: ErrorCode.NET_OFFLINE,  # WSATRY_AGAIN
    11004: ErrorCode.NET_OFFLINE,  # WSANO_DATA
}

# The errno each builtin OSError subclass stands for: its name alone says what happened.
BUILTIN_OS_ERRNOS: dict[str, int] = {
    "FileNotFoundError": errno_module.ENOENT,
    "PermissionError": errno_module.EACCES,
    "NotADirectoryError": errno_module.ENOTDIR,
    "IsADirectoryError": errno_module.EISDIR,
    "FileExistsError": errno_module.EEXIST,
    "ConnectionResetError": errno_module.ECONNRESET,
    "ConnectionAbortedError": errno_module.ECONNABORTED,
    "ConnectionRefusedError": errno_module.ECONNREFUSED,
    "TimeoutError": errno_module.ETIMEDOUT,
}

_WSA_FIRST = 10000
_POSIX_LAST = 133  # the highest errno Linux defines
# `[WinError 32]`, and Python 2's `WindowsError: [Error 32]` (old tools still print it).
_WINERROR_RE = re.compile(r"\[winerror (\d+)\]|windowserror: \[error (\d+)\]")
_ERRNO_RE = re.compile(r"\[errno (-?\d+)\]|\(?errno (\d+)\)?")
# Rust's std::io::Error, displayed (`(os error 5)`) or debug-printed (`Os { code: 5, ... }`): the
# platform's own number (see `_says_rust_os_error`).
_RUST_OS_RE = re.compile(r"\(os error (\d+)\)|\bos \{ code: (\d+)")
_WINDOWS_PATH_RE = re.compile(r"(?<![\w])[A-Za-z]:\\\\?\w")
# The repr of a builtin OSError (sub)class: `ConnectionResetError(10054, '...'`.
_REPR_RE = re.compile(
    r"\b(?:os|io|environment|connection(?:reset|aborted|refused)?|permission|filenotfound"
    r"|fileexists|isadirectory|notadirectory|brokenpipe|timeout|blockingio)error\((\d+), ['\"]"
)


def errno_of(report: ErrorReport, lowered: str) -> int | None:
    """The report's errno, or the one its text states (`[Errno 28] ...`) when it came as text."""
    if report.errno is not None:
        return report.errno
    if "errno" in lowered:
        found = _ERRNO_RE.search(lowered)
        if found:
            return int(next(g for g in found.groups() if g is not None))
    return None


def os_error_code(report: ErrorReport, lowered: str) -> tuple[ErrorCode, str] | None:
    """The code an OS error number in the report or its text implies, with the rule's name."""
    if "winerror" in lowered or "windowserror" in lowered:
        found = _WINERROR_RE.search(lowered)
        number = int(found.group(1) or found.group(2)) if found else None
        if number in WINERROR_CODES:
            return WINERROR_CODES[number], f"winerror:{number}"
    number = _number(report, lowered)
    if number is None:
        return None
    rust_on_windows = _says_rust_os_error(lowered) and (number > _POSIX_LAST or _on_windows(report))
    if number >= _WSA_FIRST or rust_on_windows:
        code = WINERROR_CODES.get(number)
        return (code, f"winerror:{number}") if code is not None else None
    code = ERRNO_CODES.get(number)
    return (code, f"errno:{number}") if code is not None else None


def _says_rust_os_error(lowered: str) -> bool:
    return "os error" in lowered or "os { code" in lowered


def _on_windows(report: ErrorReport) -> bool:
    """The report names a Windows path (`C:\\Users\\...`). Rust's `(os error N)` is the
    platform's own number: on Windows a system error code, where 112 is a full disk, not
    Linux's EHOSTDOWN."""
    path = _WINDOWS_PATH_RE.search
    return bool(path(report.message) or path(report.traceback))


def _number(report: ErrorReport, lowered: str) -> int | None:
    number = errno_of(report, lowered)
    if number is None and _says_rust_os_error(lowered):
        found = _RUST_OS_RE.search(lowered)
        number = int(found.group(1) or found.group(2)) if found else None
    if number is None and "error(" in lowered:
        found = _REPR_RE.search(lowered)
        number = int(found.group(1)) if found else None
    return number
