"""Running the server as a process: the listening socket, uvicorn, and the model's load failure as the exit error.
Imports no web framework until ``serve`` runs, so that ``ptuning --help`` stays fast."""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import TYPE_CHECKING

from ..errors import PtuningError
from .config import ServeConfig

if TYPE_CHECKING:
    from .server import Server


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn to serve on (as uvicorn binds its own: address reuse on)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, protocol)
    except OSError as error:
        raise PtuningError(f"--host {host}: cannot listen there ({error.strerror or error})") from error
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        raise PtuningError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return listener


def serve(sources: dict[str, str] | str, config: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM (uvicorn answers the requests in flight before it stops); a model that
    cannot load stops it, and its error is raised."""
    import uvicorn

    from .app import create_app

    listener = _listen(config.host, config.port)  # before loading anything: a taken port is known at once
    app = create_app(sources, config)
    runner = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info"))
    server: Server = app.state.server
    server.stop = functools.partial(setattr, runner, "should_exit", True)
    with listener, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn stopped gracefully, then raised it again
        runner.run(sockets=[listener])
    if server.failure is not None:
        raise server.failure
