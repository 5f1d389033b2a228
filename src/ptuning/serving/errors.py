"""The server's error bodies: every failure is answered as JSON ``{"error", "error_type"}`` with its status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

# the HTTP methods a route may take, as an Allow header lists them
METHODS = sorted({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "QUERY"})


class ApiError(Exception):
    """An error answered as ``{"error", "error_type"}`` with its status."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.headers = status, error_type, headers


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # a message quoting a lone surrogate could not be encoded as UTF-8: the answer would become a 500
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


def answer_errors_as_json(app: FastAPI) -> None:
    """Answer ``app``'s errors (ours, the framework's 404/405, any failure) in the one error body."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.error_type, str(error), error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # a failure of the server, not of the request (the server log has its traceback)
        return error_response(500, "internal", f"the server failed ({type(error).__name__}: {error})")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http")
        headers = dict(error.headers or {})
        if error.status_code == 405:  # RFC 9110: a 405 lists the methods the path takes (all its routes', not one's)
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(error.status_code, kind, str(error.detail), headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods the request's path takes: each that a route (the application's own, or an included router's)
    matches fully with it. The routes are asked rather than read: FastAPI keeps an included router as one route that
    lists no methods; a mount takes whatever its app does, so it is not asked."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    return [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
