"""A loopback HTTP server that speaks the Hugging Face Hub's protocol for one model repository,
as huggingface_hub 2.x uses it, with fault injection. Not a fake of genvisor: the real
`huggingface_hub` client talks to it over a real socket (point it here with `endpoint=`).

Served (repo id `org/name`, revision `main` or the commit):
  GET  /api/models/{repo}[/revision/{rev}]      model info, `siblings` with size/blobId/lfs
  GET  /api/models/{repo}/tree/{rev}[/{path}]   tree listing (recursive, expand)
  POST /api/models/{repo}/paths-info/{rev}      paths info
  HEAD/GET /{repo}/resolve/{rev}/{path}         X-Repo-Commit, ETag, X-Linked-Etag,
                                                X-Linked-Size, Content-Length, Accept-Ranges,
                                                Range -> 206 with Content-Range
`HubServer.file_metadata = False` answers the model info with file names only (no size, blob id
or LFS hash), as some mirrors do; the tree and paths-info APIs still describe each file.
`HubServer.siblings = False` answers it with no file list at all (the tree API lists them);
`HubServer.paths_info = False` has no paths-info route (404), as older mirrors.
`HubServer.redirect_lfs = True` answers an LFS file's resolve with a 302 to `/cdn/{sha256}`
(the metadata headers on the redirect), as the Hub sends it to its storage.
Faults (`HubServer.add_fault`): drop the connection mid-file, an HTTP status (500, 503, 404,
401/403 gated with the Hub's X-Error-Code headers), a delay, wrong bytes; each for N requests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Fault", "FaultKind", "HubRepo", "HubServer", "RequestRecord"]

_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".pth", ".model")


class FaultKind(StrEnum):
    DROP = "drop"  # send the headers and half the body, then close the connection
    STATUS_500 = "status_500"
    STATUS_503 = "status_503"
    NOT_FOUND = "not_found"  # 404 RepoNotFound
    GATED_401 = "gated_401"
    GATED_403 = "gated_403"
    SLOW = "slow"  # wait `delay_s` before answering
    WRONG_BYTES = "wrong_bytes"  # right length, one byte flipped in the middle


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    path: str = "*"  # glob over the file path ("api" for the JSON API)
    method: str | None = None  # HEAD / GET / POST; None for any
    times: int = 1
    delay_s: float = 0.0
    drop_after: int | None = None  # DROP: bytes sent before closing (default: half)


@dataclass(frozen=True, slots=True)
class HubFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(
            b"blob %d\0" % len(self.data) + self.data, usedforsecurity=False
        ).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    kind: str  # "api", "resolve" (the file's bytes, also at the CDN) or "redirect" (a 302)
    path: str
    status: int
    range: str | None


class HubRepo:
    """One repository: files read from a folder, a commit id derived from their content."""

    def __init__(self, repo_id: str, folder: Path, extra: dict[str, bytes] | None = None) -> None:
        self.repo_id = repo_id
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        files.update(extra or {})
        self.files = {
            name: HubFile(name, data, name.endswith(_LFS_SUFFIXES)) for name, data in files.items()
        }
        digest = hashlib.sha1(usedforsecurity=False)
        for f in self.files.values():
            digest.update(f.path.encode() + f.etag.encode())
        self.commit = digest.hexdigest()

    def sibling(self, f: HubFile) -> dict[str, object]:
        out: dict[str, object] = {"rfilename": f.path, "size": len(f.data), "blobId": f.git_oid}
        if f.lfs:
            out["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
        return out

    def tree_entry(self, f: HubFile) -> dict[str, object]:
        out: dict[str, object] = {"type": "file", "oid": f.git_oid, "size": len(f.data),
                                  "path": f.path}  # fmt: skip
        if f.lfs:
            out["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
        return out


class HubServer:
    """Start with `with HubServer(repo) as hub:`; `hub.endpoint` is the base URL."""

    def __init__(self, repo: HubRepo) -> None:
        self.repo = repo
        self.gated = False
        # False: the model info lists files by name only, as some Hub mirrors answer.
        self.file_metadata = True
        self.siblings = True
        self.paths_info = True
        # True: an LFS file's resolve answers 302 to `/cdn/{sha256}`, as the Hub redirects to
        # its storage (the metadata headers ride on the redirect).
        self.redirect_lfs = False
        self.requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def storage_endpoint(self) -> str:
        return f"http://localhost:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.gated = False
            self.file_metadata = self.siblings = self.paths_info = True
            self.redirect_lfs = False

    def gets(self, path_glob: str = "*") -> list[str]:
        """File paths of the GET /resolve requests seen, in order (one per request)."""
        with self._lock:
            return [r.path for r in self.requests
                    if r.kind == "resolve" and r.method == "GET"
                    and fnmatch.fnmatchcase(r.path, path_glob)]  # fmt: skip

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if (
                    fault.times > 0
                    and fnmatch.fnmatchcase(path, fault.path)
                    and (fault.method is None or fault.method == method)
                ):
                    fault.times -= 1
                    return fault
        return None

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        server_hub = hub

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    # -- routing -------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._route("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        repo = self.server_hub.repo
        owner, _, name = repo.repo_id.partition("/")
        if parts[:4] == ["api", "models", owner, name]:
            self._api(method, parts[4:], parse_qs(url.query))
        elif parts[:3] == [owner, name, "resolve"] and len(parts) >= 5:
            self._resolve(method, parts[3], "/".join(parts[4:]))
        elif parts[:1] == ["cdn"] and len(parts) == 2:
            self._cdn(method, parts[1])
        else:
            self._error(404, "RepoNotFound", "Repository not found", "api", method, url.path)

    def _fault(self, method: str, kind: str, path: str) -> bool:
        """Apply a fault for this request; True when the response has been sent."""
        hub = self.server_hub
        if hub.gated and kind == "resolve":
            status = 403 if self.headers.get("Authorization") else 401
            self._gated(status, kind, method, path)
            return True
        fault = hub.take_fault(method, "api" if kind == "api" else path)
        if fault is None:
            return False
        self._pending_fault = fault
        match fault.kind:
            case FaultKind.SLOW:
                time.sleep(fault.delay_s)
                return False
            case FaultKind.STATUS_500 | FaultKind.STATUS_503:
                status = 500 if fault.kind is FaultKind.STATUS_500 else 503
                self._send(status, b'{"error":"Internal Error"}', {}, kind, method, path)
                return True
            case FaultKind.NOT_FOUND:
                self._error(404, "RepoNotFound", "Repository not found", kind, method, path)
                return True
            case FaultKind.GATED_401 | FaultKind.GATED_403:
                self._gated(401 if fault.kind is FaultKind.GATED_401 else 403, kind, method, path)
                return True
        return False

    def _gated(self, status: int, kind: str, method: str, path: str) -> None:
        repo_id = self.server_hub.repo.repo_id
        message = (
            f"Access to model {repo_id} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in."
            if status == 401
            else f"Access to model {repo_id} is restricted and you are not in the authorized list."
        )
        self._error(status, "GatedRepo", message, kind, method, path)

    # -- API -----------------------------------------------------------------------------

    def _api(self, method: str, rest: list[str], query: dict[str, list[str]]) -> None:
        repo = self.server_hub.repo
        paths_info = self.server_hub.paths_info
        if self._fault(method, "api", "api"):
            return
        if not rest or rest[0] == "revision":
            rev = rest[1] if len(rest) > 1 else "main"
            if not self._revision_ok(rev, "api", method):
                return
            body = {
                "_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                "sha": repo.commit, "private": False, "disabled": False,
                "gated": "manual" if self.server_hub.gated else False,
                "tags": ["diffusers"], "library_name": "diffusers",
                "lastModified": "2025-01-01T00:00:00.000Z",
            }  # fmt: skip
            if self.server_hub.siblings:
                body["siblings"] = [
                    repo.sibling(f) if self.server_hub.file_metadata else {"rfilename": f.path}
                    for f in repo.files.values()
                ]
            self._json(body, "api", method, "api")
        elif rest[0] == "tree" and len(rest) >= 2:
            if not self._revision_ok(rest[1], "api", method):
                return
            prefix = "/".join(rest[2:])
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            self._json(self._tree(prefix, recursive), "api", method, "api")
        elif rest[0] == "paths-info" and len(rest) >= 2 and method == "POST" and paths_info:
            if not self._revision_ok(rest[1], "api", method):
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            wanted = set(form.get("paths", []))
            found = [repo.tree_entry(f) for f in repo.files.values() if f.path in wanted]
            self._json(found, "api", method, "api")
        else:
            self._error(404, "EntryNotFound", "Entry not found", "api", method, "api")

    def _tree(self, prefix: str, recursive: bool) -> list[dict[str, object]]:
        repo = self.server_hub.repo
        base = f"{prefix}/" if prefix else ""
        out: list[dict[str, object]] = []
        folders: set[str] = set()
        for f in repo.files.values():
            if not f.path.startswith(base):
                continue
            rest = f.path[len(base) :]
            if "/" in rest and not recursive:
                folders.add(base + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
            out.append(repo.tree_entry(f))
        out += [
            {"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)
        ]
        return out

    def _revision_ok(self, rev: str, kind: str, method: str) -> bool:
        if rev in ("main", self.server_hub.repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", kind, method, kind)
        return False

    # -- files ---------------------------------------------------------------------------

    def _resolve(self, method: str, rev: str, path: str) -> None:
        repo = self.server_hub.repo
        self._pending_fault: Fault | None = None
        f = repo.files.get(path)
        redirected = f is not None and f.lfs and self.server_hub.redirect_lfs
        # A redirected file's faults (and gating) happen where its bytes are: at the CDN.
        if not redirected and self._fault(method, "resolve", path):
            return
        if not self._revision_ok(rev, "resolve", method):
            return
        if f is None:
            self._error(404, "EntryNotFound", "Entry not found", "resolve", method, path,
                        {"X-Repo-Commit": repo.commit})  # fmt: skip
            return
        if redirected:
            # As the Hub does: the LFS file's metadata on a redirect to its storage (a CDN).
            cdn = {
                "X-Repo-Commit": repo.commit,
                "ETag": f'"{f.git_oid}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(len(f.data)),
                # Another host name for this server: the client treats it as storage off the
                # Hub (it does not follow it for metadata, and sends it no token).
                "Location": f"{self.server_hub.storage_endpoint}/cdn/{f.sha256}",
            }
            self._send(302, b"", cdn, "redirect", method, path)
            return
        self._serve(method, path, f, {"X-Repo-Commit": repo.commit, "ETag": f'"{f.git_oid}"'})

    def _cdn(self, method: str, sha256: str) -> None:
        f = next((f for f in self.server_hub.repo.files.values() if f.sha256 == sha256), None)
        if f is None:
            self._send(404, b"", {}, "cdn", method, sha256)
            return
        self._pending_fault = None
        if self._fault(method, "resolve", f.path):
            return
        self._serve(method, f.path, f, {"ETag": f'"{sha256}"'})

    def _serve(self, method: str, path: str, f: HubFile, headers: dict[str, str]) -> None:
        data = f.data
        fault = self._pending_fault
        if fault is not None and fault.kind is FaultKind.WRONG_BYTES and method == "GET":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        headers = {
            **headers,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if f.lfs and "X-Repo-Commit" in headers:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(len(data))
        status, start, end = 200, 0, len(data)
        range_header = self.headers.get("Range")
        if range_header and method == "GET":
            first, _, last = range_header.removeprefix("bytes=").partition("-")
            start = int(first)
            end = int(last) + 1 if last else len(data)
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                self._send(416, b"", headers, "resolve", method, path)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        drop: int | None = None
        if fault is not None and fault.kind is FaultKind.DROP and method == "GET":
            drop = len(body) // 2 if fault.drop_after is None else min(fault.drop_after, len(body))
        self._send(status, body, headers, "resolve", method, path, drop=drop)

    # -- responses -----------------------------------------------------------------------

    def _json(self, body: object, kind: str, method: str, path: str) -> None:
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"},
                   kind, method, path)  # fmt: skip

    def _error(
        self, status: int, code: str, message: str, kind: str, method: str, path: str,
        extra: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        headers = {"X-Error-Code": code, "X-Error-Message": message,
                   "Content-Type": "application/json", **(extra or {})}  # fmt: skip
        self._send(status, json.dumps({"error": message}).encode(), headers, kind, method, path)

    def _send(
        self, status: int, body: bytes, headers: dict[str, str], kind: str, method: str,
        path: str, *, drop: int | None = None,
    ) -> None:  # fmt: skip
        self.server_hub.record(RequestRecord(method, kind, path, status, self.headers.get("Range")))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "HEAD":
            return
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)
