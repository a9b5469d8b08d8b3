"""The Hugging Face hub, asked only when it can answer: a quick reachability check before a
download, so that a machine without network fails in seconds with a fix, instead of waiting
through a client's retries (transformers' tokenizer loader waited 50 s offline).

    require_hub("tokenizer 'gpt2-custom'")     # InputError at once when the hub is unreachable
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from jaxablate.errors import InputError

CONNECT_TIMEOUT_S = 3.0


def _target() -> tuple[str, int]:
    """(host, port) a download connects to first: the HTTPS proxy when one is set, else the
    hub endpoint (HF_ENDPOINT, default https://huggingface.co)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens within `timeout` s;
    False at once when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host, port = _target()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise `InputError` naming `what` and the fix when the hub cannot be reached.

    Example:
        >>> require_hub("model 'gpt2-medium'")
    """
    if not hub_reachable():
        host, port = _target()
        raise InputError(f"{what} is not in the local cache and the Hugging Face hub cannot "
                         f"be reached ({host}:{port}; offline?); pass a local folder instead, "
                         "or run once with network to fill the cache")
