"""Where a run or a split lives when it is not (only) on this machine: one interface, two backends.

    remote = open_remote("hf://me/my-run")            # Hub model repo (a run)
    remote = open_remote("hf://datasets/me/my-data")  # Hub dataset repo (a split)
    remote = open_remote("/content/drive/MyDrive/run") # a plain folder (a mounted Drive)

    remote.ensure_exists(private=True)
    remote.commit({"shard-00/latest.json": b"...", "shard-00/x.bin": Path("x.bin")}, message="...")
    remote.read_json("shard-00/latest.json")          # None when absent
    remote.list_files("shard-00/")
    remote.download(["manifest.json", "shard-00/checkpoint-4/"], local_dir)

A `commit` is one unit: on the Hub one commit (atomic: all files or none); in a
folder every file is written to a temp name and renamed, in the order given, so
a caller that puts its marker file last (a pointer, a manifest) gets the same
"marker means complete" guarantee from both backends. `commit(parent_commit=
remote.head())` is a compare-and-swap on both: refused (`is_conflict`) when
anything was committed since that head; a folder does it under a lock file
(FolderRemote's docstring).

The Hub client does not retry a commit POST and does not retry a download GET
that answered 500, so every call here goes through `with_retries` (exponential
backoff); "not found" answers are not retried.

Tested by tests/test_remote.py (`.venv/bin/python -m pytest -q tests/test_remote.py`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from kit.errors import FolderConflict, RemoteError, ShardLeaseError
from kit.files import staged_beside, write_bytes_atomic
from kit.layout import cache_folder

HUB_SCHEME = "hf://"
# First wait between tries of a failed transfer; doubles each time (tests shorten it).
RETRY_BASE_DELAY_S = 1.0
T = TypeVar("T")


def is_hub(location: str | os.PathLike) -> bool:
    return str(location).startswith(HUB_SCHEME)


def parse_hub(location: str) -> tuple[str, str]:
    """hf://USER/REPO -> ("model", "USER/REPO"); hf://datasets/USER/REPO -> ("dataset", "USER/REPO")."""
    rest = str(location)[len(HUB_SCHEME) :].strip("/")
    repo_type = "model"
    if rest.startswith("datasets/"):
        repo_type, rest = "dataset", rest[len("datasets/") :]
    elif rest.startswith("models/"):
        rest = rest[len("models/") :]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", rest):
        raise RemoteError(f"{location}: expected hf://USER/REPO (a run) or hf://datasets/USER/REPO (a split)")
    return repo_type, rest


def split_hub_path(location: str) -> tuple[str, str]:
    """hf://USER/REPO/a/b -> ("hf://USER/REPO", "a/b"): a repo and a folder inside it (datasets/ kept)."""
    rest = str(location)[len(HUB_SCHEME) :].strip("/")
    kind = ""
    for prefix in ("datasets/", "models/"):
        if rest.startswith(prefix):
            kind, rest = prefix, rest[len(prefix) :]
    parts = rest.split("/")
    repo = f"{HUB_SCHEME}{kind}{'/'.join(parts[:2])}"
    parse_hub(repo)  # a malformed address fails here, with the expected form
    return repo, "/".join(parts[2:])


def _is_missing(err: BaseException) -> bool:
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    missing = (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, FileNotFoundError)
    return isinstance(err, missing) and not _is_offline_miss(err)


def _is_offline_miss(err: BaseException) -> bool:
    # hf_hub_download raises LocalEntryNotFoundError (a FileNotFoundError) when it could not
    # reach the server at all: that is a transient failure, not an absent file.
    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(err, LocalEntryNotFoundError)


def is_conflict(err: BaseException) -> bool:
    """A conditional commit was refused: its parent_commit is no longer the head (the Hub's 412, a folder's own)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, FolderConflict):
        return True
    return isinstance(err, HfHubHTTPError) and err.response is not None and err.response.status_code == 412


def _is_permanent(err: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if _is_missing(err):
        return True
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        return 400 <= status < 500 and status not in (408, 409, 412, 429)
    return isinstance(err, (RemoteError, ValueError, PermissionError))


def with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int = 6,
    base_delay: float | None = None,
    max_delay: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Call fn until it succeeds; sleep base_delay * 2**k between tries; raise RemoteError naming `what`.

    `should_stop` lets a background uploader give up early when its work is
    superseded (a newer checkpoint is waiting).
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except ShardLeaseError:
            raise  # its own message says who holds the shard and what to do: no "failed after" around it
        except Exception as err:
            if _is_permanent(err) or attempt == attempts or (should_stop and should_stop()):
                raise RemoteError(f"{what}: failed after {attempt} attempt(s): {type(err).__name__}: {err}") from err
            delay = min(max_delay, (RETRY_BASE_DELAY_S if base_delay is None else base_delay) * 2 ** (attempt - 1))
            print(f"{what}: attempt {attempt} failed ({type(err).__name__}); retrying in {delay:.1f} s", flush=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


class Remote:
    """The operations kit needs from a run's or a split's home; see the module docstring."""

    location: str

    def ensure_exists(self, private: bool = True) -> None:
        raise NotImplementedError

    def commit(
        self,
        files: dict[str, Path | bytes],
        message: str,
        delete_folders: list[str] = (),
        retries: bool = True,
        parent_commit: str | None = None,
    ) -> None:
        """Add `files` ({path in repo: local Path or bytes}) and delete folders, as one unit.

        retries=False makes one attempt (for callers that run their own retry loop). `parent_commit`
        (a Hub head from `head()`): the commit lands only if nothing was committed since; otherwise
        the Hub answers 412, which `is_conflict` recognises (kit/lease.py builds its check on it)."""
        attempt = lambda: self._commit_once(files, message, delete_folders, parent_commit)  # noqa: E731
        if retries:
            with_retries(attempt, f"push to {self.location} ({message})")
        else:
            attempt()

    def _commit_once(
        self, files: dict[str, Path | bytes], message: str, delete_folders: list[str], parent_commit: str | None
    ) -> None:
        raise NotImplementedError

    def head(self) -> str | None:
        """The newest commit's id, for a conditional `commit(parent_commit=...)`."""
        raise NotImplementedError

    def read_bytes(self, path: str, revision: str | None = None) -> bytes | None:
        raise NotImplementedError

    def list_files(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def download(self, paths: list[str], local_dir: str | Path) -> Path:
        """Copy files (and folders, given with a trailing '/') into local_dir, keeping their paths."""
        raise NotImplementedError

    def read_json(self, path: str, revision: str | None = None):
        data = self.read_bytes(path, revision)
        return None if data is None else json.loads(data)

    def commit_folder(self, local: str | Path, path_in_repo: str, message: str, last: tuple[str, ...] = ()) -> None:
        """Commit every file under `local` as `path_in_repo/...`; names in `last` go last (markers)."""
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name in last)  # stable: markers move to the end
        prefix = path_in_repo.strip("/")
        self.commit(
            {
                f"{prefix}/{p.relative_to(local).as_posix()}" if prefix else p.relative_to(local).as_posix(): p
                for p in files
            },
            message,
        )


class HubRemote(Remote):
    """A Hub repo through huggingface_hub; the token is passed to each call, never stored elsewhere."""

    def __init__(self, location: str, token: str | None = None):
        self.location = str(location)
        self.repo_type, self.repo_id = parse_hub(location)
        self._token = token

    def __repr__(self) -> str:  # never show the token
        return f"HubRemote({self.location!r})"

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(token=self._token)

    def ensure_exists(self, private: bool = True) -> None:
        with_retries(
            lambda: self._api().create_repo(self.repo_id, repo_type=self.repo_type, private=private, exist_ok=True),
            f"create {self.location}",
        )

    def _commit_once(
        self, files: dict[str, Path | bytes], message: str, delete_folders: list[str], parent_commit: str | None
    ) -> None:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops = [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=(str(src) if isinstance(src, Path) else src))
            for p, src in files.items()
        ]
        if delete_folders:
            # Listed on every attempt: a commit that landed but whose answer was lost
            # already deleted them, and deleting a missing folder is an error.
            present = set(self.list_files())
            for folder in delete_folders:
                folder = folder.strip("/") + "/"
                if any(f.startswith(folder) for f in present):
                    ops.append(CommitOperationDelete(path_in_repo=folder, is_folder=True))
        self._api().create_commit(
            self.repo_id,
            operations=ops,
            commit_message=message,
            repo_type=self.repo_type,
            parent_commit=parent_commit,
        )

    def head(self) -> str | None:
        return with_retries(
            lambda: self._api().repo_info(self.repo_id, repo_type=self.repo_type).sha, f"read {self.location}'s head"
        )

    def read_bytes(self, path: str, revision: str | None = None) -> bytes | None:
        from huggingface_hub import hf_hub_download

        def attempt():
            try:
                local = hf_hub_download(
                    self.repo_id, path, repo_type=self.repo_type, revision=revision, token=self._token
                )
            except Exception as err:
                if _is_missing(err):
                    return None
                raise
            return Path(local).read_bytes()

        return with_retries(attempt, f"read {self.location}/{path}")

    def list_files(self, prefix: str = "") -> list[str]:
        def attempt():
            try:
                return self._api().list_repo_files(self.repo_id, repo_type=self.repo_type)
            except Exception as err:
                if _is_missing(err):
                    return []
                raise

        return [f for f in with_retries(attempt, f"list {self.location}") if f.startswith(prefix)]

    def download(self, paths: list[str], local_dir: str | Path) -> Path:
        from huggingface_hub import snapshot_download

        patterns = [p + "*" if p.endswith("/") else p for p in paths]
        local_dir = Path(local_dir)
        with_retries(
            lambda: snapshot_download(
                self.repo_id, repo_type=self.repo_type, allow_patterns=patterns, local_dir=local_dir, token=self._token
            ),
            f"download {paths} from {self.location}",
        )
        return local_dir


FOLDER_HEAD = ".kit-head"
"""In a folder remote: a token that every commit replaces, so `head()` can say whether anything landed."""
FOLDER_LOCK = ".kit-lock"
"""In a folder remote: held (created exclusively) while a commit checks its parent and publishes its files."""
LOCK_STALE_S = 120.0
"""A folder's lock older than this is a crashed writer's: it is broken. A commit holds it for milliseconds
(its files are copied before it takes the lock), so only a writer that died inside that window leaves one."""
LOCK_POLL_S = 0.02


class FolderRemote(Remote):
    """A plain folder (a mounted Google Drive, a shared disk): same calls, file copies.

    A commit copies its files to hidden temp names beside their targets first, then, holding
    `.kit-lock` (created with O_EXCL, atomic on a local disk and on NFS), checks `parent_commit`
    against `.kit-head`, renames the files into place in the caller's order, moves the deleted
    folders aside and writes a new head token. So a conditional commit is a compare-and-swap here
    too, and kit/lease.py and kit/round_store.py race the same way on both backends. What no
    lock can make atomic: one folder synced between machines by a sync service (a Drive shared
    between accounts), which has no shared moment to compare at."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.root = Path(location)

    def __repr__(self) -> str:
        return f"FolderRemote({self.location!r})"

    def ensure_exists(self, private: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def head(self) -> str:
        path = self.root / FOLDER_HEAD
        return (path.read_text().strip() if path.is_file() else "") or "empty"

    def _commit_once(
        self, files: dict[str, Path | bytes], message: str, delete_folders: list[str], parent_commit: str | None
    ) -> None:
        staged, trash = [], []
        try:
            for path, src in files.items():  # in the caller's order: its marker file comes last
                staged.append((staged_beside(self.root / path, src), self.root / path))
            with self._locked():
                if parent_commit is not None and self.head() != parent_commit:
                    raise FolderConflict(
                        f"{self.location}: something was committed since {parent_commit} ({message} not written)"
                    )
                for tmp, final in staged:
                    os.replace(tmp, final)
                staged = []
                for folder in delete_folders:
                    target = self.root / folder.strip("/")
                    if target.exists():  # aside under a hidden name (list_files skips it), removed after the lock
                        trash.append(target.with_name(f".{target.name}.deleted-{secrets.token_hex(3)}"))
                        os.rename(target, trash[-1])
                write_bytes_atomic(self.root / FOLDER_HEAD, secrets.token_hex(8).encode())
        finally:
            for tmp, _ in staged:  # a refused or failed commit leaves nothing behind
                tmp.unlink(missing_ok=True)
            for folder in trash:
                shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold `.kit-lock` for the block; break one left by a writer that died holding it."""
        lock = self.root / FOLDER_LOCK
        self.root.mkdir(parents=True, exist_ok=True)
        mine = f"{socket.gethostname()} pid {os.getpid()} {secrets.token_hex(4)}"
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                self._break_if_stale(lock)
                time.sleep(LOCK_POLL_S)
        with os.fdopen(fd, "w") as out:
            out.write(mine)
        try:
            yield
        finally:
            try:
                if lock.read_text() == mine:  # not if it was broken as stale meanwhile and is someone else's now
                    lock.unlink()
            except FileNotFoundError:
                pass

    def _break_if_stale(self, lock: Path) -> None:
        try:
            age = time.time() - lock.stat().st_mtime
            if age < LOCK_STALE_S:
                return
            holder = lock.read_text()
            aside = lock.with_name(f"{FOLDER_LOCK}.stale-{secrets.token_hex(3)}")
            os.rename(lock, aside)  # atomic: of several waiters breaking it, one does
        except FileNotFoundError:
            return  # released (or broken by another waiter) meanwhile
        aside.unlink(missing_ok=True)
        print(
            f"{self.location}: broke {FOLDER_LOCK}, held {age:.0f} s by {holder or 'a writer'} that never released it",
            flush=True,
        )

    def read_bytes(self, path: str, revision: str | None = None) -> bytes | None:
        target = self.root / path
        return target.read_bytes() if target.is_file() else None

    def list_files(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        # Hidden names are kit's own (the head, the lock, staged files, folders being deleted): never content.
        return sorted(f for f in found if f.startswith(prefix) and not any(p.startswith(".") for p in f.split("/")))

    def download(self, paths: list[str], local_dir: str | Path) -> Path:
        local_dir = Path(local_dir)
        for path in paths:
            for name in self.list_files(path) if path.endswith("/") else [path]:
                src = self.root / name
                if src.is_file():
                    (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, local_dir / name)
        return local_dir


def open_remote(location: str | Path, token: str | None = None) -> Remote:
    """HubRemote for hf://..., FolderRemote for anything else. Reads use `token` or find_token()."""
    if is_hub(location):
        if token is None:
            from kit.hf_token import find_token

            token = find_token()  # private repos need it even to read; public ones don't
        return HubRemote(str(location), token)
    return FolderRemote(location)


def open_remote_for_push(location: str | Path, purpose: str) -> Remote:
    """Like open_remote, but a Hub location without a token fails now, with where to put one."""
    if is_hub(location):
        from kit.hf_token import require_token

        parse_hub(str(location))  # a malformed address is the first thing to report
        return HubRemote(str(location), require_token(purpose))
    return FolderRemote(location)


def default_work_dir(location: str) -> Path:
    """Local folder for a Hub run: $KIT_CACHE/runs/USER--REPO (what a Colab disk loses is on the Hub)."""
    return cache_folder("runs", parse_hub(location)[1])
