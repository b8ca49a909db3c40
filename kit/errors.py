"""The errors a kit user can fix, as one family: `KitError` and its kinds.

    try:
        train_shard(cfg, "shards/", 0, "runs/x")
    except KitError as err:      # a bad record, a bad template, a missing model, a merge that can't be done...
        print(err)               # one message that names the thing and the fix

Every error kit raises for something the user gave it (data, a preset, a model
path, a source adapter, a Hub address) derives from `KitError`; anything else
that escapes is a bug in kit and keeps its traceback. The older second bases
stay (`ValueError`, `FileNotFoundError`, `ModuleNotFoundError`, ...) so callers
that caught those keep working.

A message names what was wrong the way Python spells it (`method='svd'`,
`data.max_length=64`), and `params` lists the arguments it names: the CLI adds
their flags (`--method`), a notebook points at its parameters cell
(`show_errors_first`). The CLI prints the message without a traceback;
`KIT_TRACEBACK=1` shows it (for a bug report).

Not here: kit/bootstrap.py's `KitInstallError`. The install cell runs before kit
is installed, so it can import nothing of kit's (it is standard library only).

Tested by tests/test_errors.py.
"""

from __future__ import annotations


class KitError(Exception):
    """Something the user gave kit is wrong; the message says what, where, and how to fix it."""

    def __init__(self, message: str = "", *, param: str | tuple[str, ...] | None = None):
        super().__init__(message)
        # The arguments the message names (`method`, `eval_fraction`, `data.max_length`), for the caller's spelling.
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param or ())


class ConfigError(KitError, ValueError):
    """A preset or override is not valid; the message lists every problem."""


class RecordError(KitError, ValueError):
    """A data record is malformed; the message names the file, the line and the fix."""


class ShardError(KitError, ValueError):
    """A split folder is missing, incomplete or changed since it was written."""


class DataError(KitError, ValueError):
    """The data leaves nothing to train or evaluate (every example cut away by data.max_length, ...)."""


class ChatTemplateError(KitError, ValueError):
    """The tokenizer has no chat template, refuses a conversation, or alters assistant content so that it
    cannot be located in the rendered text."""


class ModelNotFound(KitError, FileNotFoundError):
    """model.name_or_path names a local folder that is not there."""


class MissingPackageError(KitError, ModuleNotFoundError):
    """A config asks for something whose package is not installed; the message names the package and the fix."""


class MissingTokenError(KitError, RuntimeError):
    """A Hub write was asked for and no token was found in any source."""


class RemoteError(KitError, RuntimeError):
    """A remote location is malformed, or a transfer failed after every retry."""


class FolderConflict(RemoteError):
    """A conditional commit to a folder remote whose head moved since the caller read it: a folder's HTTP 412.

    kit/remote.py raises it; `is_conflict` tells it apart from a failed transfer, so a lease or a round's
    outer step re-reads and retries instead of giving up.
    """


class UploadError(KitError, RuntimeError):
    """Something that should be on a run's remote is not, after every retry (kit/sync.py raises it)."""


class MergeError(KitError, ValueError):
    """The adapters can't be merged as asked; the message lists every reason and the fix."""


class IdentityMismatch(KitError, ValueError):
    """A checkpoint was trained on other data or settings than the run resuming it (kit/identity.py)."""


class WheelError(KitError, RuntimeError):
    """kit's own wheel can't be built from this install (kit/wheel.py)."""


class LaunchError(KitError, RuntimeError):
    """A torchrun child exited with an error; its own output, above, says why."""


class SecretInOutputError(KitError, ValueError):
    """Something about to be published (a model card) holds what looks like a Hub token."""


class ShardLeaseError(RemoteError):
    """Another session holds the shard's lease (kit/lease.py), or took it from this one: one writer per shard."""


def show_errors_first() -> bool:
    """In a notebook, show a KitError's message above its traceback; True when installed.

    A cell that fails still fails (papermill stops, Run all stops): only the order changes,
    so the fix is the first thing a person reads, with the notebook's spelling of the
    parameter at fault. Outside IPython this does nothing and returns False."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def handler(shell, etype, value, tb, tb_offset=None):
        lines = [f"kit: {value}"]
        named = [p for p in value.params if p in shell.user_ns]
        if named:
            lines.append(
                f"(set {', '.join(f'`{p}`' for p in named)} in the parameters cell at the top, then Run all again)"
            )
        stb = ["\n".join(lines), ""] + shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
        # IPython ignores what a custom handler returns: it must send the error output itself, so
        # the cell is still marked failed (papermill and Run all stop there).
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc((KitError,), handler)
    return True
