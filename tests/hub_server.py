"""A strict, in-memory Hugging Face Hub for tests.

Owns: `HubServer`, a local HTTP server that speaks the part of the Hub's wire
protocol huggingface_hub 2.4 uses for kit's work (repos, commits, downloads; see
the project brief's HUB-PROTOCOL.md), with git-like semantics: every commit is an
immutable snapshot with a 40-hex sha, branches point at commits, a stale
`parentCommit` is refused with 412. It is strict on purpose: a request it does
not implement is answered 404 and recorded in `server.unhandled`, so a test can
assert the client used nothing the server fakes. Every request (headers and
body included) is recorded in `server.requests` so a test can prove the token
goes only where it should. Faults (500s, dropped connections, lost responses)
and delays can be injected; a commit is applied atomically or not at all.

Usage (the environment must point huggingface_hub here before it is imported;
see tests/hub_env.py):

    port = configure_hub_env(tmp_home)
    server = HubServer(port=port).start()
    ... HfApi().upload_folder(...) ...
    assert server.files("user/repo")["config.json"] == b"..."
    server.stop()

Tested by tests/test_hub_server.py:
    .venv/bin/python -m pytest tests/test_hub_server.py -q
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PLURAL = {v: k for k, v in REPO_TYPES.items()}
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# The user a token without namespace creates repos under (create_repo("name")).
DEFAULT_USER = "kit-tester"

# What the real Hub puts in a new repo's first commit; our own short version,
# so clients see the same initial file they would on huggingface.co.
_INITIAL_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"
    b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(data: bytes) -> str:
    """git's blob sha1: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class _Blob:
    data: bytes
    oid: str


@dataclass(frozen=True)
class _Commit:
    sha: str
    parent: str | None
    summary: str
    description: str
    date: str
    files: Mapping[str, _Blob]  # read-only view: snapshots never change


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)  # insertion order = history


@dataclass
class RecordedRequest:
    """One request as the server saw it; `status` is None when dropped unanswered."""

    method: str
    path: str  # raw path, percent-encoded, without the query
    query: str
    headers: dict[str, str]  # lower-cased names, every header the client sent
    body: bytes
    status: int | None = None
    fault: str | None = None


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


class _Unhandled(Exception):
    """A request outside what this server implements."""


class HubServer:
    """In-memory Hub on a ThreadingHTTPServer; see the module docstring."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", token: str | None = None, user: str = DEFAULT_USER):
        # token=None accepts any bearer token; a string accepts only that one.
        self.host, self.port, self.token, self.user = host, port, token, user
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[str] = []
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.set_faults()
        self.set_delay(0.0)

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> HubServer:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> HubServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- inspection ------------------------------------------------------

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The snapshot at `revision` (branch or commit sha) as {path: bytes}."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            return {path: blob.data for path, blob in commit.files.items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """Every commit of the repo, oldest first: {sha, parent, summary, description, files}."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return [
                {
                    "sha": c.sha,
                    "parent": c.parent,
                    "summary": c.summary,
                    "description": c.description,
                    "files": {p: b.data for p, b in c.files.items()},
                }
                for c in repo.commits.values()
            ]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return self._get_repo(repo_type, repo_id).private

    def clear_log(self) -> None:
        """Forget recorded requests and unhandled routes (between tests)."""
        with self._lock:
            self.requests.clear()
            self.unhandled.clear()

    def reset(self) -> None:
        """Back to an empty Hub: no repos, no faults, no delay, empty logs."""
        with self._lock:
            self._repos.clear()
            self.clear_log()
            self.set_faults()
            self.set_delay(0.0)

    # ---- fault injection -------------------------------------------------

    def set_faults(
        self,
        error_rate: float = 0.0,
        drop_rate: float = 0.0,
        seed: int = 0,
        methods: Iterable[str] | None = None,
        paths: Iterable[str] | None = None,
        lost_rate: float = 0.0,
        max_faults: int | None = None,
    ) -> None:
        """Make a share of matching requests fail; call with no arguments to stop.

        error_rate: answered 500 without being applied. drop_rate: connection
        closed with no response, not applied. lost_rate: applied, then the
        connection is closed with no response (the client cannot tell whether
        its commit landed). `methods` (e.g. {"POST"}) and `paths` (regexes
        searched in the raw path) restrict which requests may fail; None = all.
        `max_faults` caps how many faults are injected in total.
        The choice is a hash of (seed, method, path, n-th time this method+path
        was seen), so it is deterministic even when the client's threads race.
        """
        with self._lock:
            self._faults = {
                "error": error_rate,
                "drop": drop_rate,
                "lost": lost_rate,
                "seed": seed,
                "methods": {m.upper() for m in methods} if methods is not None else None,
                "paths": [re.compile(p) for p in paths] if paths is not None else None,
                "left": max_faults,
            }
            self._fault_seen: dict[tuple[str, str], int] = {}
            self.faults_injected = 0

    def set_delay(
        self, seconds: float, paths: Iterable[str] | None = None, methods: Iterable[str] | None = None
    ) -> None:
        """Sleep `seconds` before applying matching requests (slow uploads).

        The body has been received but nothing is applied yet, so a client
        killed during the delay leaves the repo untouched.
        """
        with self._lock:
            self._delay = (
                seconds,
                [re.compile(p) for p in paths] if paths is not None else None,
                {m.upper() for m in methods} if methods is not None else None,
            )

    def _pick_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            f = self._faults
            if not (f["error"] or f["drop"] or f["lost"]) or f["left"] == 0:
                return None
            if f["methods"] is not None and method not in f["methods"]:
                return None
            if f["paths"] is not None and not any(p.search(path) for p in f["paths"]):
                return None
            n = self._fault_seen.get((method, path), 0)
            self._fault_seen[(method, path)] = n + 1
            digest = hashlib.sha256(f"{f['seed']}|{method}|{path}|{n}".encode()).digest()
            draw = int.from_bytes(digest[:8], "big") / 2**64
            kind = None
            if draw < f["error"]:
                kind = "error"
            elif draw < f["error"] + f["drop"]:
                kind = "drop"
            elif draw < f["error"] + f["drop"] + f["lost"]:
                kind = "lost"
            if kind is not None:
                self.faults_injected += 1
                if f["left"] is not None:
                    f["left"] -= 1
            return kind

    def _delay_for(self, method: str, path: str) -> float:
        seconds, paths, methods = self._delay
        if seconds <= 0 or (methods is not None and method not in methods):
            return 0.0
        if paths is not None and not any(p.search(path) for p in paths):
            return 0.0
        return seconds

    # ---- state (call with the lock held) ---------------------------------

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HttpError(404, f"Repository {repo_id} ({repo_type}) not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            found = [sha for sha in repo.commits if sha.startswith(revision)]
            if len(found) == 1:
                return repo.commits[found[0]]
        raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit(
        self, repo: _Repo, parent: str | None, summary: str, description: str, files: dict[str, _Blob]
    ) -> _Commit:
        tree = "\n".join(f"{p} {b.oid}" for p, b in sorted(files.items()))
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{summary}\n{next(self._counter)}\n{tree}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = _Commit(sha, parent, summary, description, _now(), MappingProxyType(dict(files)))
        repo.commits[sha] = commit
        return commit

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        repo = _Repo(repo_type, repo_id, private, _now())
        blob = _Blob(_INITIAL_GITATTRIBUTES, git_blob_oid(_INITIAL_GITATTRIBUTES))
        first = self._new_commit(repo, None, "initial commit", "", {".gitattributes": blob})
        repo.branches["main"] = first.sha
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else _PLURAL[repo_type] + "/"
        return f"{self.url}/{prefix}{repo_id}"


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _clean_path(path: str) -> str:
    """A repo path as git would store it; refuses absolute or escaping paths."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise HttpError(400, f"Invalid path in repo: {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise HttpError(400, f"Invalid path in repo: {path!r}")
    return path


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the Hub
    server_version = "kit-test-hub/1"

    def log_message(self, format, *args):  # the request log lives in hub.requests
        pass

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    # ---- plumbing --------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        body = self._read_body()  # always drain it, or keep-alive breaks
        record = RecordedRequest(
            method=self.command,
            path=split.path,
            query=split.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        with hub._lock:
            hub.requests.append(record)
        self._record = record

        fault = hub._pick_fault(self.command, split.path)
        record.fault = fault
        if fault == "drop":
            self._drop()
            return
        if fault == "error":
            self._send_json(500, {"error": "Injected fault: internal server error"})
            return
        delay = hub._delay_for(self.command, split.path)
        if delay:
            time.sleep(delay)

        try:
            status, headers, payload = self._route(split.path, parse_qs(split.query), body)
        except HttpError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message.encode("ascii", "replace").decode()
            status, payload = err.status, {"error": err.message}
        except _Unhandled as err:
            description = f"{self.command} {self.path}: {err}"
            with hub._lock:
                hub.unhandled.append(description)
            status, headers, payload = 404, {}, {"error": f"Not implemented by the test Hub: {description}"}
        except Exception as err:  # a bug here must fail the test, not hide in a retried 500
            description = f"{self.command} {self.path}: test Hub crashed: {err!r}"
            with hub._lock:
                hub.unhandled.append(description)
            status, headers, payload = 500, {}, {"error": description}

        if fault == "lost":  # applied, but the client never hears back
            self._drop()
            return
        if isinstance(payload, (bytes, bytearray)):
            self._send(status, bytes(payload), headers)
        else:
            self._send_json(status, payload, headers)

    def _drop(self) -> None:
        self._record.status = None
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_json(self, status: int, obj, headers: dict | None = None) -> None:
        headers = {"Content-Type": "application/json", **(headers or {})}
        self._send(status, json.dumps(obj).encode(), headers)

    def _send(self, status: int, data: bytes, headers: dict) -> None:
        self._record.status = status
        self.send_response(status)
        headers = dict(headers)
        # HEAD says how long the GET body would be, and sends none.
        headers.setdefault("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        auth = self.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return False
        return self.hub.token is None or auth[7:].strip() == self.hub.token

    def _require_auth(self) -> None:
        auth = self.headers.get("authorization", "")
        if not auth:
            raise HttpError(401, "Authorization header is required for this request (no token sent)")
        if not self._authorized():
            raise HttpError(401, "Invalid credentials in Authorization header")

    # ---- routing ---------------------------------------------------------

    def _route(self, raw_path: str, query: dict, body: bytes):
        method = self.command
        segments = [unquote(s) for s in raw_path.split("/")[1:]]

        if segments[:1] == ["api"]:
            rest = segments[1:]
            if rest == ["validate-yaml"] and method == "POST":
                return 200, {}, {"errors": [], "warnings": []}
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(body)
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(body)
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, tail = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                return self._repo_api(method, repo_type, repo_id, tail, query, body)
            raise _Unhandled("unknown API route")

        # /[datasets/|spaces/]ns/name/resolve/rev/path...
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type, segments = REPO_TYPES[segments[0]], segments[1:]
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(repo_type, f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:]))
        raise _Unhandled("unknown route")

    def _repo_api(self, method, repo_type, repo_id, tail, query, body):
        hub = self.hub
        head = tail[0] if tail else None
        if method == "GET" and not tail:
            return self._repo_info(repo_type, repo_id, "main", query)
        if method == "GET" and head == "revision" and len(tail) == 2:
            return self._repo_info(repo_type, repo_id, tail[1], query)
        if method == "GET" and head == "tree" and len(tail) >= 2:
            return self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]), query)
        if method == "GET" and tail == ["refs"]:
            with hub._lock:
                repo = self._readable_repo(repo_type, repo_id)
                branches = [
                    {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                    for name, sha in sorted(repo.branches.items())
                ]
            return 200, {}, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}
        if method == "GET" and head == "commits" and len(tail) == 2:
            return self._commit_log(repo_type, repo_id, tail[1])
        if method == "POST" and head == "preupload" and len(tail) == 2:
            return self._preupload(repo_type, repo_id, tail[1], query, body)
        if method == "POST" and head == "commit" and len(tail) == 2:
            return self._commit(repo_type, repo_id, tail[1], query, body)
        if head == "branch" and len(tail) == 2 and method in ("POST", "DELETE"):
            return self._branch(method, repo_type, repo_id, tail[1], body)
        raise _Unhandled(f"unknown {repo_type} repo API route")

    @staticmethod
    def _json(body: bytes):
        try:
            return json.loads(body or b"{}")
        except ValueError:
            raise HttpError(400, "Request body is not valid JSON") from None

    def _readable_repo(self, repo_type: str, repo_id: str) -> _Repo:
        """The repo, hidden as RepoNotFound (401 without a token) when private."""
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            status = 404 if self._authorized() else 401
            raise HttpError(status, f"Repository not found: {repo_id} ({repo_type})", "RepoNotFound")
        return repo

    # ---- endpoints -------------------------------------------------------

    def _whoami(self):
        self._require_auth()
        return (
            200,
            {},
            {
                "type": "user",
                "name": self.hub.user,
                "fullname": "kit test user",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "kit-test", "role": "write"}},
            },
        )

    def _create_repo(self, body: bytes):
        self._require_auth()
        payload, hub = self._json(body), self.hub
        name, org = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if repo_type not in _PLURAL or not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise HttpError(400, f"Invalid repo name or type: {name!r} ({repo_type!r})")
        if "private" in payload:
            private = bool(payload["private"])
        else:  # huggingface_hub 2.x sends visibility
            private = payload.get("visibility") == "private"
        repo_id = f"{org or hub.user}/{name}"
        with hub._lock:
            url = hub.repo_url(repo_type, repo_id)
            if (repo_type, repo_id) in hub._repos:
                return 409, {}, {"error": "You already created this repo", "url": url}
            hub._create_repo(repo_type, repo_id, private)
        return 200, {}, {"url": url, "name": repo_id, "id": repo_id}

    def _delete_repo(self, body: bytes):
        self._require_auth()
        payload, hub = self._json(body), self.hub
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or hub.user}/{payload.get('name')}"
        with hub._lock:
            hub._get_repo(repo_type, repo_id)
            del hub._repos[(repo_type, repo_id)]
        return 200, {}, {}

    def _repo_info(self, repo_type, repo_id, revision, query):
        hub = self.hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit = hub._resolve(repo, revision)
        blobs = _truthy((query.get("blobs") or [None])[0])
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=len(blob.data), blobId=blob.oid)
            siblings.append(sibling)
        author = repo_id.split("/")[0]
        return (
            200,
            {},
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": author,
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.created,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                # The model-card code loops over tags: never leave them out.
                "tags": [],
                "siblings": siblings,
            },
        )

    def _tree(self, repo_type, repo_id, revision, path, query):
        hub = self.hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit = hub._resolve(repo, revision)
        recursive = _truthy((query.get("recursive") or [None])[0])
        expand = _truthy((query.get("expand") or [None])[0])
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        under = {p: b for p, b in commit.files.items() if p.startswith(prefix)}
        if prefix and not under:
            raise HttpError(
                404, f"Path {path} not found in {repo_id}@{revision}", "EntryNotFound", {"X-Repo-Commit": commit.sha}
            )
        files, dirs = [], {}
        for p, blob in sorted(under.items()):
            rel_parts = p[len(prefix) :].split("/")
            # Every directory between `prefix` and the file, or only the first if not recursive.
            depth = len(rel_parts) - 1 if recursive else min(1, len(rel_parts) - 1)
            for i in range(1, depth + 1):
                dirs.setdefault(prefix + "/".join(rel_parts[:i]), []).append(blob.oid)
            if recursive or len(rel_parts) == 1:
                entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": p}
                if expand:
                    entry["lastCommit"] = {"id": commit.sha, "title": commit.summary, "date": commit.date}
                files.append(entry)
        entries = [
            {
                "type": "directory",
                "oid": hashlib.sha1(f"{d}:{' '.join(oids)}".encode()).hexdigest(),
                "size": 0,
                "path": d,
            }
            for d, oids in sorted(dirs.items())
        ]
        return 200, {}, sorted(entries + files, key=lambda e: e["path"])

    def _preupload(self, repo_type, repo_id, revision, query, body):
        self._require_auth()
        payload, hub = self._json(body), self.hub
        if _truthy((query.get("create_pr") or [None])[0]):
            raise _Unhandled("pull requests (create_pr) are not implemented")
        files = payload.get("files")
        if not isinstance(files, list):
            raise HttpError(400, "preupload: 'files' must be a list")
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            current = hub._resolve(repo, revision).files
        answer = []
        for item in files:
            path = _clean_path(item.get("path"))
            entry = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
            if path in current:  # lets the client skip files that did not change
                entry["oid"] = current[path].oid
            answer.append(entry)
        return 200, {}, {"files": answer, "commitOid": None}

    def _commit(self, repo_type, repo_id, revision, query, body):
        self._require_auth()
        hub = self.hub
        if _truthy((query.get("create_pr") or [None])[0]):
            raise _Unhandled("pull requests (create_pr) are not implemented")
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "Commit body is not NDJSON") from None
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "Commit body must start with a header line")
        header = lines[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary:
            raise HttpError(400, "Commit summary is required")
        # Decode everything before touching the repo: a bad line changes nothing.
        ops = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HttpError(400, f"Unsupported file encoding {value.get('encoding')!r}")
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except (binascii.Error, ValueError):
                    raise HttpError(400, f"Invalid base64 content for {value.get('path')!r}") from None
                ops.append(("add", _clean_path(value.get("path")), _Blob(data, git_blob_oid(data))))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, _clean_path(str(value.get("path", "")).rstrip("/")), None))
            else:
                raise _Unhandled(f"commit operation {key!r} is not implemented (only regular uploads)")

        with hub._lock:  # check + apply as one step: commits are atomic
            repo = self._readable_repo(repo_type, repo_id)
            if revision not in repo.branches:
                raise HttpError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
            head_sha = repo.branches[revision]
            parent = header.get("parentCommit")
            if parent and not (len(parent) >= 7 and head_sha.startswith(parent)):
                raise HttpError(412, f"A commit has happened since {parent}: the head of {revision} is {head_sha}")
            files = dict(repo.commits[head_sha].files)
            for kind, path, blob in ops:
                if kind == "add":
                    files[path] = blob
                elif kind == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
            commit = hub._new_commit(repo, head_sha, summary, header.get("description") or "", files)
            repo.branches[revision] = commit.sha
        return (
            200,
            {},
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{hub.repo_url(repo_type, repo_id)}/commit/{commit.sha}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _commit_log(self, repo_type, repo_id, revision):
        """list_repo_commits: newest first, following parents (one page, no Link header)."""
        hub = self.hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit, log = hub._resolve(repo, revision), []
            while commit is not None:
                log.append(
                    {
                        "id": commit.sha,
                        "title": commit.summary,
                        "message": commit.description,
                        "authors": [{"user": hub.user}],
                        "date": commit.date,
                    }
                )
                commit = repo.commits.get(commit.parent) if commit.parent else None
        return 200, {}, log

    def _branch(self, method, repo_type, repo_id, branch, body):
        self._require_auth()
        payload, hub = self._json(body), self.hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            if method == "DELETE":
                if branch == "main" or branch not in repo.branches:
                    raise HttpError(
                        400 if branch == "main" else 404,
                        f"Cannot delete branch {branch}",
                        None if branch == "main" else "RevisionNotFound",
                    )
                del repo.branches[branch]
                return 200, {}, {}
            if branch in repo.branches:
                return 409, {}, {"error": f"Branch {branch} already exists"}
            start = hub._resolve(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.sha
        return 200, {}, {}

    def _resolve_file(self, repo_type, repo_id, revision, path):
        hub = self.hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit = hub._resolve(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HttpError(
                404, f"Entry not found: {path} in {repo_id}@{revision}", "EntryNotFound", {"X-Repo-Commit": commit.sha}
            )
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        data, status = blob.data, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and self.command == "GET":  # the client resumes .incomplete files this way
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                raise HttpError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        return status, headers, data
