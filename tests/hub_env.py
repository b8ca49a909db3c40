"""Point the real huggingface_hub client at the local test Hub (tests/hub_server.py).

Owns: the environment a test process needs before anything imports
huggingface_hub or transformers (see the project brief's HUB-PROTOCOL.md, "Environment").
huggingface_hub reads HF_ENDPOINT once, at import, so `configure_hub_env` must run
first: tests/conftest.py calls it at import time; a standalone test module calls
it at module level (or uses `ensure_hub_env`, which reuses what conftest set).

This module must stay importable without importing huggingface_hub: it only
touches os.environ and a socket.

Usage:
    from hub_env import configure_hub_env   # tests/ is on sys.path under pytest
    port = configure_hub_env("/tmp/some-hf-home")   # then import huggingface_hub
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from urllib.parse import urlsplit

# A fake token: the local server accepts any bearer token; tests grep recorded
# requests and pushed files for this exact string to prove it never leaks.
FAKE_TOKEN = "hf_kit_test_token_0123456789abcdefXYZ"

# Variables that would send the client elsewhere (offline mode, staging, a real
# token or cache on the developer's machine) or stop it sending our token.
_UNSET = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "TRANSFORMERS_CACHE",
)


def free_port() -> int:
    """A localhost port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configure_hub_env(tmp_home: str, port: int | None = None) -> int:
    """Set os.environ so huggingface_hub talks to http://127.0.0.1:PORT; return PORT.

    Call before huggingface_hub is imported; afterwards HF_ENDPOINT is already
    frozen in huggingface_hub.constants and a warning is printed to stderr.
    """
    if "huggingface_hub" in sys.modules:
        print(
            "hub_env: huggingface_hub was imported before configure_hub_env(); "
            "its endpoint is already fixed and may not be the test server",
            file=sys.stderr,
        )
    port = port or free_port()
    for name in _UNSET:
        os.environ.pop(name, None)
    os.makedirs(tmp_home, exist_ok=True)
    os.environ.update(
        {
            "HF_ENDPOINT": f"http://127.0.0.1:{port}",
            "HF_HOME": tmp_home,
            # Else each process GETs /api/agent-harnesses once.
            "HF_HUB_DISABLE_TELEMETRY": "1",
            # One commit per upload and no Xet endpoints to implement.
            "HF_HUB_DISABLE_XET": "1",
            # CLI-only network checks; harmless elsewhere.
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_TOKEN": FAKE_TOKEN,
        }
    )
    return port


def current_hub_port() -> int | None:
    """The port HF_ENDPOINT points at when it is a local test server, else None."""
    endpoint = os.environ.get("HF_ENDPOINT", "")
    parts = urlsplit(endpoint)
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost") and parts.port:
        return parts.port
    return None


def ensure_hub_env() -> int:
    """Reuse the environment conftest already set, or configure a fresh one.

    For test modules that must also run on their own (without conftest).
    """
    port = current_hub_port()
    if port is not None and os.environ.get("HF_HOME") and os.environ.get("HF_TOKEN"):
        return port
    return configure_hub_env(tempfile.mkdtemp(prefix="kit-hf-home-"))
