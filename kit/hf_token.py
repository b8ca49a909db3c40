"""Where the Hugging Face token comes from, and the one error for a push without one.

    token = find_token()                          # None when there is none
    token = require_token("push to hf://me/run")  # MissingTokenError that says where to put it

Sources, in order: Colab secrets (`google.colab.userdata`), Kaggle secrets
(`kaggle_secrets.UserSecretsClient`), the `HF_TOKEN` environment variable, then
the token a `hf auth login` or `notebook_login()` saved (`huggingface_hub.get_token`).
A source whose module is missing (not on that platform) or that has no
HF_TOKEN is skipped. The token is never a notebook parameter (papermill writes
parameters into the executed notebook), and nothing here prints, logs or
stores it: callers hand it straight to huggingface_hub.

Tested by tests/test_remote.py (`.venv/bin/python -m pytest -q tests/test_remote.py`).
"""

from __future__ import annotations

import os

from kit.bootstrap import platform_secret  # one reader of the secrets, shared with the install cell
from kit.errors import MissingTokenError

TOKEN_NAME = "HF_TOKEN"


def _login_token() -> str | None:
    """A token saved by `hf auth login` or `notebook_login()` (huggingface_hub's own lookup)."""
    from huggingface_hub import get_token

    return get_token()


def find_token() -> str | None:
    """The first token found: Colab secret, Kaggle secret, $HF_TOKEN, then a saved login; None if none."""
    for source in (platform_secret, lambda: os.environ.get(TOKEN_NAME), _login_token):
        token = source()
        if token and token.strip():
            return token.strip()
    return None


def missing_token_message(purpose: str) -> str:
    return (
        f"{purpose} needs a Hugging Face token with write access, and none was found. Put it in "
        f"a secret named {TOKEN_NAME}: on Colab, click the key icon in the left sidebar, add "
        f"{TOKEN_NAME} and switch 'Notebook access' on; on Kaggle, Add-ons -> Secrets -> add "
        f"{TOKEN_NAME} and attach it to this notebook; elsewhere, `export {TOKEN_NAME}=hf_...`. "
        "Never pass the token as a notebook parameter. Create one at https://huggingface.co/settings/tokens"
    )


def require_token(purpose: str) -> str:
    token = find_token()
    if token is None:
        raise MissingTokenError(missing_token_message(purpose))
    return token
