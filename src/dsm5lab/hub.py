"""Is the Hugging Face Hub usable from here? Asked once per process, so an offline machine fails in seconds.

Without this, a Hub id that is not cached costs each library's own retries (about 23 s for `datasets`)
before any error, and HF_HUB_OFFLINE set after `datasets` or `huggingface_hub` was imported is ignored
(both read it once, at import).
"""

from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlsplit

TRUE = ("1", "true", "yes", "on")
_reachable: dict[tuple[str, int], bool] = {}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_set() -> bool:
    """HF_HUB_OFFLINE, read now (not at some library's import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within timeout_s (remembered per endpoint)."""
    url = urlsplit(endpoint())
    key = (url.hostname or "", url.port or (80 if url.scheme == "http" else 443))
    if key not in _reachable:
        try:
            socket.create_connection(key, timeout=timeout_s).close()
            _reachable[key] = True
        except OSError:  # no route, refused, DNS failure, timeout
            _reachable[key] = False
    return _reachable[key]


def offline() -> bool:
    """True when HF_HUB_OFFLINE is set or the endpoint cannot be reached: use the local cache only."""
    return offline_set() or not reachable()


def why_offline() -> str:
    return "HF_HUB_OFFLINE is set" if offline_set() else f"the Hub ({endpoint()}) cannot be reached"


@contextlib.contextmanager
def cache_only():
    """Make `huggingface_hub` and `datasets` (already imported or not) read only their local caches."""
    import huggingface_hub.constants as hub_constants

    targets = [hub_constants]
    with contextlib.suppress(ImportError):
        import datasets.config

        targets.append(datasets.config)
    saved = [(t, t.HF_HUB_OFFLINE) for t in targets]
    try:
        for t in targets:
            t.HF_HUB_OFFLINE = True
        yield
    finally:
        for t, value in saved:
            t.HF_HUB_OFFLINE = value
