"""The one exception tree of dyntriton.

Every error a user can see derives from :class:`DyntritonError`. Each carries a
``status`` (a KServe / gRPC status name) so frontends map it to the right code
without guessing, and an optional ``hint`` saying what to do about it::

    DyntritonError                       (status INTERNAL unless overridden)
    ├── ConfigError                      bad option, unknown name, missing file
    │   └── UnknownNameError             e.g. ``--store-kv nope``; lists known names
    ├── PluginError                      a plugin failed to import or register
    │   └── PluginConflictError          two plugins offer one name
    ├── StoreError                       KV store failures
    │   ├── StoreUnavailableError        the store cannot be reached (UNAVAILABLE)
    │   └── LeaseExpiredError            a lease is gone (NOT_FOUND)
    ├── TransportError                   the request plane failed
    │   ├── PeerGoneError                the other side vanished (UNAVAILABLE)
    │   └── PeerUnresponsiveError        the other side stopped showing signs of life (UNAVAILABLE)
    ├── BackendError                     the inference backend failed
    │   └── TritonError                  Triton's own code and message
    ├── ModelNotFoundError               unknown model (NOT_FOUND)
    ├── InvalidRequestError              request does not match the model (INVALID_ARGUMENT)
    ├── NoInstanceError                  no live instance of a model (UNAVAILABLE)
    ├── RequestCancelledError            the client cancelled (CANCELLED)
    ├── DeadlineExceededError            the client's deadline passed (DEADLINE_EXCEEDED)
    └── OverloadedError                  shed by admission control (RESOURCE_EXHAUSTED; HTTP 503 + Retry-After)

Foreign exceptions are mapped once, at the boundary that catches them, with
``raise SomeError(...) from exc``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BackendError",
    "ConfigError",
    "DeadlineExceededError",
    "DyntritonError",
    "InvalidRequestError",
    "LeaseExpiredError",
    "ModelNotFoundError",
    "NoInstanceError",
    "OverloadedError",
    "PeerGoneError",
    "PeerUnresponsiveError",
    "PluginConflictError",
    "PluginError",
    "RequestCancelledError",
    "StoreError",
    "StoreUnavailableError",
    "TransportError",
    "TritonError",
    "UnknownNameError",
    "error_from_status",
]

#: KServe / gRPC status names used by ``DyntritonError.status``.
STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


class DyntritonError(Exception):
    """Base of every dyntriton error.

    :param message: what went wrong, in one line a user can act on.
    :param hint: optional advice on what to do next.
    :param status: override of the class's gRPC status name.
    """

    status: str = "INTERNAL"

    def __init__(self, message: str, *, hint: str | None = None, status: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            if status not in STATUS_NAMES:
                raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUS_NAMES)}")
            self.status = status

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(DyntritonError):
    """An option, name, path or setting is wrong."""

    status = "INVALID_ARGUMENT"


class UnknownNameError(ConfigError):
    """A user asked for a name (store, transport, backend, dtype...) nobody provides.

    :param kind: what was looked up, e.g. ``"kv-store"``.
    :param name: the name asked for.
    :param known: the names that are available.
    """

    status = "NOT_FOUND"

    def __init__(self, kind: str, name: str, known: Iterable[str], *, hint: str | None = None):
        self.kind, self.name, self.known = kind, name, sorted(known)
        available = ", ".join(self.known) if self.known else "none installed"
        super().__init__(f"unknown {kind} {name!r}; available: {available}", hint=hint)


class PluginError(DyntritonError):
    """A plugin could not be imported or failed while registering."""


class PluginConflictError(PluginError):
    """Two plugins register the same name for the same kind."""

    def __init__(self, kind: str, name: str, first: str, second: str):
        self.kind, self.name, self.providers = kind, name, (first, second)
        super().__init__(
            f"{kind} {name!r} is provided by two plugins: {first!r} and {second!r}",
            hint="uninstall one of them, or disable one with DYNTRITON_DISABLE_PLUGINS",
        )


class StoreError(DyntritonError):
    """A key-value store operation failed."""


class StoreUnavailableError(StoreError):
    """The key-value store cannot be reached (names the endpoint)."""

    status = "UNAVAILABLE"


class LeaseExpiredError(StoreError):
    """The lease no longer exists: it expired or was revoked."""

    status = "NOT_FOUND"


class TransportError(DyntritonError):
    """The request plane failed to carry a request or a response."""

    status = "UNAVAILABLE"


class PeerGoneError(TransportError):
    """The remote end of a transport connection vanished."""


class PeerUnresponsiveError(TransportError):
    """The remote end is connected but stopped answering (heartbeats unanswered: frozen, stuck).

    :param started: the peer had received the request before it stopped answering, so it may
        have run (or may still run) there; False: it certainly never started there, and
        sending it elsewhere is safe.
    """

    def __init__(self, message: str, *, started: bool, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.started = started

    @classmethod
    def silent(cls, address: str, quiet: float, *, read: bool | None) -> PeerUnresponsiveError:
        """The error, in every transport's words, of a call to a peer silent for ``quiet`` seconds.

        :param read: the peer had read the call's request (True), had not (False), or the call is
            new and was not sent because the peer is already unresponsive (None).
        """
        silence = f"nothing received for {quiet:.1f} s"
        if read is None:
            return cls(f"the peer at {address} is unresponsive ({silence})", started=False)
        when = "while it had the request" if read else "before it read the request"
        return cls(f"the peer at {address} stopped answering ({silence}) {when}", started=read)


class BackendError(DyntritonError):
    """The inference backend failed."""


class TritonError(BackendError):
    """An error produced by Triton itself, with Triton's code and message.

    :param code: the ``TRITONSERVER_Error_Code`` name, e.g. ``"INVALID_ARG"``.
    """

    _STATUS_OF_CODE = {
        "UNKNOWN": "UNKNOWN",
        "INTERNAL": "INTERNAL",
        "NOT_FOUND": "NOT_FOUND",
        "INVALID_ARG": "INVALID_ARGUMENT",
        "UNAVAILABLE": "UNAVAILABLE",
        "UNSUPPORTED": "UNIMPLEMENTED",
        "ALREADY_EXISTS": "ALREADY_EXISTS",
        "CANCELLED": "CANCELLED",
    }

    def __init__(self, code: str, message: str, *, hint: str | None = None):
        self.code = code
        super().__init__(message, hint=hint, status=self._STATUS_OF_CODE.get(code, "INTERNAL"))


class ModelNotFoundError(DyntritonError):
    """The model is not known (to the repository, the backend or the frontend)."""

    status = "NOT_FOUND"


class InvalidRequestError(DyntritonError):
    """The request does not match the model's inputs, outputs, dtypes or shapes."""

    status = "INVALID_ARGUMENT"


class NoInstanceError(DyntritonError):
    """No live instance serves the model right now."""

    status = "UNAVAILABLE"


class RequestCancelledError(DyntritonError):
    """The request was cancelled by its client."""

    status = "CANCELLED"


class DeadlineExceededError(DyntritonError):
    """The client's deadline passed before the request finished."""

    status = "DEADLINE_EXCEEDED"


class OverloadedError(DyntritonError):
    """Admission control refused the request at once: it could not be served in time (or the queue is full).

    :param retry_after: seconds after which a retry is likely to be admitted (HTTP ``Retry-After``).
    :param status: UNAVAILABLE where Triton answers so (its queue policy's ``max_queue_size``).
    """

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float = 1.0, hint: str | None = None, status: str | None = None):
        super().__init__(
            message, hint=hint or "retry later, with backoff, or add workers for this model", status=status
        )
        self.retry_after = retry_after


_CLASS_OF_STATUS: dict[str, type[DyntritonError]] = {
    "NOT_FOUND": ModelNotFoundError,
    "INVALID_ARGUMENT": InvalidRequestError,
    "UNAVAILABLE": NoInstanceError,
    "CANCELLED": RequestCancelledError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}


def error_from_status(status: str, message: str) -> DyntritonError:
    """Rebuild an error received over a transport from its status name and message."""
    cls = _CLASS_OF_STATUS.get(status, DyntritonError)
    err = cls(message)
    if status in STATUS_NAMES:
        err.status = status
    return err
