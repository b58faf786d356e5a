"""Whether the Hugging Face hub can be reached, and calls that go straight to the local cache when
it cannot.

Without network, `huggingface_hub` and `datasets` retry every request with a growing back-off
(five retries, about 25-50 s per file) before they fall back to the cache or fail. fmb asks once
per process, in at most `PROBE_SECONDS`, whether the hub's host answers; when it does not, the
calls inside `hub_or_cache()` run in offline mode, so a cached file is used at once and a missing
one fails at once with the caller's one-line error (which names `fmb setup download`).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


def reachable() -> bool:
    """False in offline mode (`HF_HUB_OFFLINE=1`) or when the hub's host does not answer a TCP
    connection within `PROBE_SECONDS` (name lookup included)."""
    import huggingface_hub.constants as constants

    return not constants.HF_HUB_OFFLINE and _answers(constants.ENDPOINT)


@cache
def _answers(endpoint: str) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    answered: list[bool] = []

    def connect() -> None:  # a name lookup has no timeout of its own: the thread bounds it
        try:
            socket.create_connection((url.hostname or "", port), timeout=PROBE_SECONDS).close()
            answered.append(True)
        except (OSError, UnicodeError):
            answered.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(PROBE_SECONDS)
    return bool(answered and answered[0])


@contextmanager
def offline() -> Iterator[None]:
    """The hub unreachable while it lasts, whatever the environment says: nothing is downloaded,
    everything comes from the local cache."""
    import datasets.config
    import huggingface_hub.constants as constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


@contextmanager
def hub_or_cache() -> Iterator[None]:
    """Hub calls inside go to the hub when it answers, else straight to the local cache."""
    if reachable():
        yield
    else:
        with offline():
            yield
