"""The one error family of eventpipe.

Every failure a client or an operator can see is an `EventpipeError`: a code from the
contract, an HTTP status, a message and whether trying again later may succeed. Foreign
exceptions (redis, SQLAlchemy) are translated into these at one boundary each; the API
renders them in one exception handler, the worker decides retry-or-fail on `retryable`.
"""

from __future__ import annotations

from typing import Any

MAX_SHOWN_NAME = 100


class EventpipeError(Exception):
    status = 400
    code = "VALIDATION_FAILED"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.details:
            error["details"] = self.details
        return {"success": False, "error": error}


class ValidationFailed(EventpipeError):
    status = 400
    code = "VALIDATION_FAILED"


class Unauthorized(EventpipeError):
    status = 401
    code = "UNAUTHORIZED"

    def __init__(self, message: str = "Missing, invalid or revoked API key") -> None:
        super().__init__(message)


class Forbidden(EventpipeError):
    """Signed in, but the request is not one the session made (a missing CSRF token)."""

    status = 403
    code = "FORBIDDEN"


class TooManyRequests(EventpipeError):
    status = 429
    code = "TOO_MANY_REQUESTS"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(EventpipeError):
    status = 404
    code = "NOT_FOUND"


class Conflict(EventpipeError):
    status = 409


class PayloadTooLarge(EventpipeError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than {limit} bytes")


class ServiceUnavailable(EventpipeError):
    """A dependency is down or saturated; the client should retry after a pause."""

    status = 503
    code = "SERVICE_UNAVAILABLE"
    retryable = True


class RateLimited(EventpipeError):
    """Over the project's rate limit (contract: 429 RATE_LIMIT_EXCEEDED, `retryAfter` seconds
    in the error object and a Retry-After header)."""

    status = 429
    code = "RATE_LIMIT_EXCEEDED"
    retryable = True

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Rate limit exceeded for this project; retry after {retry_after} s")
        self.retry_after = retry_after

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["retryAfter"] = self.retry_after
        return body


class ProjectBacklogFull(ServiceUnavailable):
    """The project has its share of the backlog queued: its own sends wait, others go on."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(
            f"This project has too many events queued ({queued} of its share of {limit}); "
            "retry later"
        )


class QueueUnavailable(ServiceUnavailable):
    def __init__(self, message: str = "The event queue is unavailable, retry later") -> None:
        super().__init__(message)


class StoreUnavailable(ServiceUnavailable):
    def __init__(self, message: str = "The database is unavailable, retry later") -> None:
        super().__init__(message)


class PartitionMissing(StoreUnavailable):
    """An insert found no time partition of `events` for a row (SQLSTATE 23514 with no
    constraint named): an outage of the store's upkeep, never a refusal of the event. The
    worker creates the partition and tries again, or waits it out."""

    def __init__(self, message: str = "No partition of events holds this event yet") -> None:
        super().__init__(message)


class StoreRefused(EventpipeError):
    """The database refused what it was given (a constraint, a trigger, a policy, a value over
    a limit): not an outage, and the same rows tried again cannot help. The database's own
    words (`detail`, with the SQLSTATE) are for operators only: they may quote values."""

    status = 422
    code = "STORE_REJECTED"
    CLIENT_MESSAGE = (
        "The store refused this event; an operator can replay it once the cause is fixed"
    )

    def __init__(self, sqlstate: str, reason: str) -> None:
        super().__init__(self.CLIENT_MESSAGE)
        self.sqlstate = sqlstate
        self.detail = f"{sqlstate}: {reason}"

    def failure(self) -> EventpipeError:
        """What a refused event is recorded as: this class's code, the database's words."""
        return EventpipeError(self.detail, code=StoreRefused.code, status=self.status)


class StoreTimeout(StoreRefused):
    """A statement timed out or was cancelled: tried again a bounded number of times, then a
    refusal of the events that keep timing out."""

    code = "STORE_TIMEOUT"
    CLIENT_MESSAGE = "The store timed out on this event; an operator can replay it"

    def failure(self) -> EventpipeError:
        return EventpipeError(self.detail, code=self.code, status=self.status)


class ValueRefused(StoreRefused):
    """A value the store cannot hold that the API's checks let through (class 22, or the
    driver's own refusal): the caller's input, a 400 in the API."""

    status = 400
    code = "VALIDATION_FAILED"

    def __init__(self, sqlstate: str, reason: str) -> None:
        super().__init__(sqlstate, reason)
        # Generic for the client: the database's words (in `detail`) are for the log.
        self.message = "A value in the request cannot be stored"
        self.args = (self.message,)


# Failure codes whose stored message is the database's: operators read it, clients get these.
CLIENT_MESSAGES = {
    StoreRefused.code: StoreRefused.CLIENT_MESSAGE,
    StoreTimeout.code: StoreTimeout.CLIENT_MESSAGE,
}


# The send contract's own codes and messages (contract.md, POST /v1/events/send).
def email_or_contact_id_required() -> EventpipeError:
    return ValidationFailed(
        "Either email or contactId is required", code="EMAIL_OR_CONTACT_ID_REQUIRED"
    )


def event_not_found() -> EventpipeError:
    return NotFound("Event not found", code="EVENT_NOT_FOUND")


def contact_not_found_for_event() -> EventpipeError:
    return NotFound(
        "Contact not found for the provided email or contactId",
        code="CONTACT_NOT_FOUND_FOR_EVENT",
    )


def unknown_property(prop: str, event_name: str) -> EventpipeError:
    # The name is the client's, of any length: the answer shows enough of it to find it.
    shown = prop if len(prop) <= MAX_SHOWN_NAME else prop[: MAX_SHOWN_NAME - 3] + "..."
    return ValidationFailed(
        f'Property "{shown}" is not declared on event "{event_name}"', code="UNKNOWN_PROPERTY"
    )


def invalid_property_value(prop: str, expected: str) -> EventpipeError:
    return ValidationFailed(f'Property "{prop}" must be {expected}', code="INVALID_PROPERTY_VALUE")


def idempotency_key_in_use() -> EventpipeError:
    return Conflict(
        "A request with this Idempotency-Key is still in progress; retry later",
        code="IDEMPOTENCY_KEY_IN_USE",
    )


def idempotency_key_mismatch() -> EventpipeError:
    return EventpipeError(
        "This Idempotency-Key was used with a different request body",
        code="IDEMPOTENCY_KEY_MISMATCH",
        status=422,
    )


def past_retention(retention: str) -> EventpipeError:
    """An event accepted longer ago than the store keeps events (its month was dropped)."""
    return EventpipeError(
        f"The event was accepted more than {retention} ago (EVENTS_RETENTION): "
        "its time partition is no longer kept",
        code="PAST_RETENTION",
        status=422,
    )


def contact_not_found() -> EventpipeError:
    return NotFound("Contact not found", code="CONTACT_NOT_FOUND")
