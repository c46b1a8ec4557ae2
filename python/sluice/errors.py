"""Exceptions raised by :mod:`sluice`: one class per C status code of libsluice.

Every error is a :class:`SluiceError` carrying the C status code (``code``) and the
library's message. An error never means "allowed": callers that catch
:class:`SluiceError` must decide what to do (fail closed by default).
"""

from __future__ import annotations


class SluiceError(Exception):
    """Base class. ``code`` is the negative SLUICE_E* status; ``message`` its text."""

    code: int = 0

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NullArgumentError(SluiceError):
    code = -1


class BadStructSizeError(SluiceError):
    code = -2


class EmptyKeyError(SluiceError, ValueError):
    code = -3


class KeyTooLongError(SluiceError, ValueError):
    code = -4


class UnknownTierError(SluiceError, LookupError):
    code = -5


class CostZeroError(SluiceError, ValueError):
    code = -6


class CostAboveCapacityError(SluiceError, ValueError):
    code = -7


class NoSegmentError(SluiceError):
    """The segment does not exist: is sluiced running?"""

    code = -8


class VersionMismatchError(SluiceError):
    code = -9


class TableFullError(SluiceError):
    code = -10


class CorruptSegmentError(SluiceError):
    code = -11


class BusyError(SluiceError):
    """The key was being reclaimed by sluiced and it did not finish in time; retry."""

    code = -12


class SegmentPermissionError(SluiceError, PermissionError):
    code = -13


class NotReadyError(SluiceError):
    code = -14


class InternalError(SluiceError):
    code = -15


BY_CODE: dict[int, type[SluiceError]] = {
    cls.code: cls
    for cls in (
        NullArgumentError, BadStructSizeError, EmptyKeyError, KeyTooLongError,
        UnknownTierError, CostZeroError, CostAboveCapacityError, NoSegmentError,
        VersionMismatchError, TableFullError, CorruptSegmentError, BusyError,
        SegmentPermissionError, NotReadyError, InternalError,
    )
}


def error_for(code: int, message: str) -> SluiceError:
    """The exception instance for a C status code (unknown codes -> SluiceError)."""
    return BY_CODE.get(code, SluiceError)(message, code)
