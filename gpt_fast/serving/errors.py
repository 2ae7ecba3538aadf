"""The errors a serving request can meet, each with the HTTP status and OpenAI error type it maps to.

The engine raises them at submission (before any work is done); the HTTP layer turns them into OpenAI's error JSON
({"error": {"message", "type", "param", "code"}}) with `status`. Nothing here imports a web framework.
"""

from __future__ import annotations


class ServingError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(ServingError):
    """A parameter out of range or of the wrong kind (400)."""

    status = 400
    type = "invalid_request_error"


class ContextTooLong(BadRequest):
    """prompt + max_tokens does not fit the model's n_positions (400, as OpenAI and vLLM answer)."""

    def __init__(self, message: str, param: str | None = "max_tokens"):
        super().__init__(message, param, "context_length_exceeded")


class Unauthorized(ServingError):
    status = 401
    type = "authentication_error"


class NotFound(ServingError):
    status = 404
    type = "not_found_error"


class QueueFull(ServingError):
    """The engine's waiting queue is at its bound (503: retry later)."""

    status = 503
    type = "server_overloaded"

    def __init__(self, message: str):
        super().__init__(message, None, "queue_full")


class EngineStopped(ServingError):
    status = 503
    type = "server_unavailable"
