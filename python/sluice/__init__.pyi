"""Sluice: one exact, host-wide rate limit shared by every worker process.

    import sluice
    with sluice.Client() as client:            # $SLUICE_SEGMENT or "sluice"
        d = client.acquire("api-key-123", "pro")
        if not d.allowed:
            return 429, d.headers()

Decisions are made in shared memory in-process (no lock, no network). Errors raise
a subclass of :class:`SluiceError`; nothing is ever silently allowed.

Type stub: :class:`Client` and :class:`Decision` come from the private extension
``_sluice``; the ASGI/WSGI middlewares and their helpers are typed inline in
:mod:`sluice.asgi` (``RateLimitMiddleware(..., max_body_bytes=1 MiB)``,
``reads_body``, ``json_field(*path, default=None)``, ``request_json``) and
:mod:`sluice.wsgi` (``json_field(*path, max_body_bytes=1 MiB, default=None)``,
``request_body``). ``default`` (a str, an int or None) is what ``json_field``
returns when the field is missing or the body is not JSON (``GET``, ``HEAD`` and
``OPTIONS`` bodies are never read), e.g. ``tier=json_field("model", default="free")``.
"""

from types import TracebackType
from typing import Optional, Type, Union

from typing_extensions import Self

from sluice.errors import BadStructSizeError as BadStructSizeError
from sluice.errors import BusyError as BusyError
from sluice.errors import BY_CODE as BY_CODE
from sluice.errors import CorruptSegmentError as CorruptSegmentError
from sluice.errors import CostAboveCapacityError as CostAboveCapacityError
from sluice.errors import CostZeroError as CostZeroError
from sluice.errors import EmptyKeyError as EmptyKeyError
from sluice.errors import InternalError as InternalError
from sluice.errors import KeyTooLongError as KeyTooLongError
from sluice.errors import NoSegmentError as NoSegmentError
from sluice.errors import NotReadyError as NotReadyError
from sluice.errors import NullArgumentError as NullArgumentError
from sluice.errors import SegmentPermissionError as SegmentPermissionError
from sluice.errors import SluiceError as SluiceError
from sluice.errors import TableFullError as TableFullError
from sluice.errors import UnknownTierError as UnknownTierError
from sluice.errors import VersionMismatchError as VersionMismatchError
from sluice.errors import error_for as error_for

__all__ = ["Client", "Decision", "SluiceError", "error_for", "ABI_VERSION"]
__version__: str

ABI_VERSION: int
"""libsluice's ABI version at run time: ``major << 16 | minor``."""

Key = Union[str, bytes, bytearray, memoryview]
"""A key: ``str`` (its UTF-8 bytes) or any bytes-like object (any content, NULs too)."""

class Decision:
    """The outcome of one admission check. Truthy when admitted. Made only by
    :meth:`Client.acquire` / :meth:`Client.peek` (``Decision()`` raises TypeError)."""

    @property
    def allowed(self) -> bool:
        """True if admitted."""
    @property
    def limit(self) -> int:
        """Units per window that applied."""
    @property
    def remaining(self) -> int:
        """Units left in the window after this call."""
    @property
    def retry_after(self) -> float:
        """Seconds until a retry can succeed (0 if allowed)."""
    @property
    def reset_after(self) -> float:
        """Seconds until the window holds no admission."""
    @property
    def window(self) -> float:
        """Window length in seconds."""
    @property
    def tier(self) -> str:
        """Tier name."""
    @property
    def tier_index(self) -> int:
        """Index of the tier in the policy's tier table."""
    @property
    def reason(self) -> str:
        """'allowed', 'window_full', 'cost_above_limit' or 'tier_closed'."""
    @property
    def reason_code(self) -> int:
        """The SLUICE_REASON_* value behind :attr:`reason`."""
    def headers(self) -> dict[str, str]:
        """Response headers: Retry-After (when denied), IETF RateLimit-Limit/-Remaining/-Reset
        and OpenAI-style x-ratelimit-limit-requests/-remaining-requests/-reset-requests
        (both resets from :attr:`reset_after`)."""
    def __bool__(self) -> bool: ...

class Client:
    """A handle on the host's Sluice segment. Thread-safe; share one per process."""

    def __init__(self, segment: Optional[str] = None) -> None:
        """Open the segment pair (None: $SLUICE_SEGMENT or 'sluice').

        Raises NoSegmentError (is sluiced running?), SegmentPermissionError,
        VersionMismatchError, CorruptSegmentError, NotReadyError, InternalError;
        TypeError for a name that is not a str; ValueError for a name with a NUL
        character. Not picklable or copyable (TypeError)."""
    def acquire(self, key: Key, tier: str, cost: int = 1) -> Decision:
        """Check and record ``cost`` units for (tier, key), all or nothing.

        A denial is a Decision with ``allowed`` False, not an exception. Raises a
        SluiceError on bad input (EmptyKeyError, KeyTooLongError, UnknownTierError,
        CostZeroError, CostAboveCapacityError, TableFullError, BusyError,
        InternalError), TypeError for a key that is not str/bytes-like or a cost
        that is not an int, ValueError for a cost outside 0..2**32-1 (0 raises
        CostZeroError) or once the client is closed, UnicodeEncodeError for a str
        key or tier with no UTF-8 form (a lone surrogate), and BufferError for a
        non-contiguous buffer key."""
    def peek(self, key: Key, tier: str, cost: int = 1) -> Decision:
        """The decision acquire() would make; records nothing."""
    def close(self) -> None:
        """Unmap the segment. Further calls raise ValueError."""
    @property
    def closed(self) -> bool:
        """True once closed (or if ``__init__`` never ran)."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...
