"""Sluice: one exact, host-wide rate limit shared by every worker process.

    import sluice
    with sluice.Client() as client:            # $SLUICE_SEGMENT or "sluice"
        d = client.acquire("api-key-123", "pro")
        if not d.allowed:
            return 429, d.headers()

Decisions are made in shared memory in-process (no lock, no network). Errors raise
a subclass of :class:`SluiceError`; nothing is ever silently allowed.
"""

from __future__ import annotations

from sluice.errors import *  # noqa: F401,F403
from sluice.errors import SluiceError, error_for

from _sluice import ABI_VERSION, Client, Decision

__all__ = ["Client", "Decision", "SluiceError", "error_for", "ABI_VERSION"]
__version__ = "0.1.0"
