"""The server's error bodies: every failure is answered as JSON ``{"error", "error_type"}`` with its status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, compile_path

# the HTTP methods (a path item of the schema may hold other keys: parameters, summary)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "QUERY"}


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
    """The methods the request's path takes: those the OpenAPI schema documents for it (routes of included routers
    among them) and those of the application's own routes (the docs pages, which the schema leaves out)."""
    path = request.scope["path"]
    found = {
        method.upper()
        for template, operations in request.app.openapi().get("paths", {}).items()
        if compile_path(template)[0].match(path)
        for method in operations
        if method.upper() in METHODS
    }
    for route in request.app.router.routes:
        methods = getattr(route, "methods", None)
        if methods and route.matches(request.scope)[0] is not Match.NONE:
            found |= methods
    return sorted(found)
