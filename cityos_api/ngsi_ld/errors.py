"""NGSI-LD errors (ETSI GS CIM 009 clause 5.5.2, 6.3.2): ProblemDetails as ``application/json`` with the NGSI-LD
error type URIs, never internal detail. The app's own handler answers ``application/problem+json`` for every other
route; :class:`NgsiError` has its own handler (registered by ``install``)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

__all__ = ["ERRORS", "NgsiError", "bad_request", "handle"]

_BASE = "https://uri.etsi.org/ngsi-ld/errors/"
#: NGSI-LD error type → (HTTP status, title).
ERRORS: dict[str, tuple[int, str]] = {
    "InvalidRequest": (400, "Invalid request"),
    "BadRequestData": (400, "Bad request data"),
    "ResourceNotFound": (404, "Resource not found"),
    # 6.3.4: an Accept the facade cannot answer is a plain HTTP 406 (NGSI-LD defines no error type for it)
    "NotAcceptable": (406, "Not Acceptable"),
    "OperationNotSupported": (422, "Operation not supported"),
    "InternalError": (500, "Internal error"),
}


class NgsiError(Exception):
    """An NGSI-LD error: ``kind`` is one of :data:`ERRORS`; ``detail`` is for people and safe to show."""

    def __init__(self, kind: str, detail: str, status: int | None = None, title: str | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status or ERRORS[kind][0]
        self.title = title or ERRORS[kind][1]

    def body(self) -> dict[str, object]:
        type_ = "about:blank" if self.kind == "NotAcceptable" else _BASE + self.kind
        return {"type": type_, "title": self.title, "status": self.status, "detail": self.detail}


def bad_request(param: str, expected: str, got: object = None) -> NgsiError:
    """A 400 BadRequestData naming the parameter, what was expected and (cut short) what came."""
    shown = "" if got is None else f", got {str(got)[:80]!r}"
    return NgsiError("BadRequestData", f"{param}: expected {expected}{shown}")


async def handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NgsiError)
    return JSONResponse(exc.body(), status_code=exc.status, media_type="application/json")
