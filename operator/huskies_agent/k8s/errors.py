"""Typed Kubernetes API errors, chosen from the HTTP status in one place (:func:`error_for`).

Callers catch the kind they expect (``except NotFound``) instead of comparing status codes.
``ApiException``, :func:`is_conflict` and :func:`is_not_found` remain as thin aliases for code
written against the earlier single exception type.

Which failed calls are retried (:func:`should_retry`; the loop is in :mod:`huskies_agent.k8s.api`):

- a 429 answer, for every method: the API server (priority and fairness, or a storage not yet
  ready) rejected the request before processing it, so repeating it cannot apply it twice;
  likewise any 503 carrying ``Retry-After``;
- for reads (GET, which includes lists) also other 5xx answers and connection errors: a read has
  no effect, so a repeat is always safe.

Writes are not retried on 5xx or connection errors: a POST may have created the object (a repeat
answers 409 for an object this very call made), and a PUT conditional on ``resourceVersion`` that
landed answers 409 on repeat — the lease elector would read that as a lost election. The callers'
own loops (engine resyncs, the elector's rounds) retry those at their level, where the outcome is
re-read first.
"""

from __future__ import annotations

import json

__all__ = [
    "ApiError",
    "ApiException",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "NotFound",
    "ServerError",
    "TooManyRequests",
    "Unauthorized",
    "error_for",
    "is_conflict",
    "is_not_found",
    "kind_for",
    "parse_retry_after",
    "should_retry",
]


class ApiError(Exception):
    """A non-2xx answer of the API server (also the base of every typed error below).

    Constructing ``ApiError`` itself gives the subclass for the status (``ApiError(404, ...)`` is a
    :class:`NotFound`), so fakes and old code that raise the base type still meet ``except NotFound``.
    """

    def __new__(cls, status: int, *args: object, **kwargs: object) -> ApiError:
        kind = kind_for(status) if cls is ApiError else cls
        return super().__new__(kind)

    def __init__(
        self, status: int, reason: str, body: str = "", method: str = "", path: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.method = method
        self.path = path
        #: Seconds the server asked us to wait (``Retry-After``), if it did.
        self.retry_after = retry_after
        super().__init__(f"{method} {path}: {status} {reason}".strip())

    @property
    def message(self) -> str:
        """The ``message`` of the server's Status body, else the HTTP reason."""
        try:
            return str(json.loads(self.body).get("message") or self.reason)
        except (ValueError, AttributeError):
            return self.reason


class Unauthorized(ApiError):
    """401: the credentials were refused (an expired token, a revoked certificate)."""


class Forbidden(ApiError):
    """403: RBAC does not allow the call."""


class NotFound(ApiError):
    """404: no such object (or no such resource type)."""


class Conflict(ApiError):
    """409: AlreadyExists on create, or a stale ``resourceVersion`` on update."""


class Gone(ApiError):
    """410: a watch or list continuation too old for the server's history."""


class Invalid(ApiError):
    """422: the object failed validation."""


class TooManyRequests(ApiError):
    """429: throttled by priority and fairness; ``retry_after`` says for how long."""


class ServerError(ApiError):
    """5xx: the API server (or something between us and it) failed."""


#: The old name of :class:`ApiError`, kept for existing callers.
ApiException = ApiError

_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone, 422: Invalid,
    429: TooManyRequests,
}


def kind_for(status: int) -> type[ApiError]:
    """The one place an HTTP status becomes an exception type."""
    return _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)


def error_for(
    status: int, reason: str, body: str = "", method: str = "", path: str = "",
    retry_after: str | None = None,
) -> ApiError:
    """The typed error for an answer, with its ``Retry-After`` header parsed."""
    return kind_for(status)(status, reason, body, method, path, parse_retry_after(retry_after))


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the API server sends whole seconds); None when absent or a date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def should_retry(method: str, error: ApiError | None) -> bool:
    """Whether a failed call may be repeated as is (``error`` None: a connection error or timeout)."""
    read = method.upper() in ("GET", "HEAD")
    if error is None:
        return read
    if isinstance(error, TooManyRequests):
        return True
    if error.status == 503 and error.retry_after is not None:
        return True
    return read and isinstance(error, ServerError)


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, NotFound)


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, Conflict)
