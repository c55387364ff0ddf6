"""Starting the server so that what it prints is true: the port is bound before anything
says "serving", and a port in use is one plain line, not a traceback."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

import typer
import uvicorn
from uvicorn.supervisors import Multiprocess

EXIT_STARTUP_FAILED = 1


class PortUnavailable(Exception):
    """The address cannot be bound; the message says which and what to do."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening), as uvicorn would bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortUnavailable(
                f"port {port} on {host} is already in use; choose another with --port "
                "(or server.port in the config)"
            ) from None
        if exc.errno == errno.EACCES:
            raise PortUnavailable(
                f"not allowed to bind port {port} on {host}; choose a port above 1023 with --port"
            ) from None
        raise PortUnavailable(
            f"cannot bind {host}:{port} ({exc.strerror}); check --host and --port"
        ) from None
    sock.set_inheritable(True)
    return sock


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, telling ``announce`` once it has started and listens."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._announce()


def run_server(config: uvicorn.Config, banner: str) -> None:
    """Bind, then serve ``config`` (one process, or its ``workers``), printing ``banner`` once
    the port is bound and, with one process, the app has started. Exits with status 1 when
    the port cannot be bound or the app does not start."""
    try:
        sock = bind_listener(config.host, config.port)
    except PortUnavailable as exc:
        typer.echo(f"llm-gateway: {exc}", err=True)
        raise typer.Exit(EXIT_STARTUP_FAILED) from None

    def announce() -> None:
        typer.echo(banner)

    try:
        if config.workers > 1:
            announce()  # the supervisor holds the bound port; workers start behind it
            Multiprocess(config, sockets=[sock]).run()
            return
        server = _AnnouncingServer(config, announce)
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        return
    finally:
        sock.close()
    if not server.started:
        raise typer.Exit(EXIT_STARTUP_FAILED)


def server_config(**options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``options`` (the keyword arguments of ``uvicorn.run``)."""
    return uvicorn.Config(**options)
