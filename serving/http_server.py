"""How the server meets the network: the port it claims, the limits it keeps, and the
uvicorn configuration both `serve` paths (one process, or `--workers N`) run with.

- `claim_port`: one deployment per port. A port another process holds is refused with a
  message naming it, and so is a second `meta-embed serve` on a port whose workers share
  it by SO_REUSEPORT (a lock file held for the deployment's lifetime tells them apart).
- `limited_protocol`: uvicorn's httptools protocol with what it lacks: a connection that
  has not finished sending a request's headers within `header_timeout_s` is closed (an
  idle or stalled connection no longer lives forever), and headers over `max_header_bytes`
  are answered 431 and the connection closed before they fill memory.
- `uvicorn_config`: keep-alive timeout, the connection limit (503 beyond it) and the above.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.serving_config import ServingConfig

RESPONSE_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\ncontent-length: 32\r\nconnection: close\r\n\r\n"
                b"request header fields too large\n")  # fmt: skip


class PortTaken(OSError):
    """The port is held by another process or another meta-embed deployment."""


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to (host, port), ready for uvicorn to listen on; with `reuse_port`
    the workers of one deployment each bind one (SO_REUSEPORT) and the kernel spreads
    connections across them."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortTaken(f"port {port} on {host} is already in use by another process; stop it or "
                            "choose another --port") from None  # fmt: skip
        raise
    return sock


@contextlib.contextmanager
def claim_port(host: str, port: int) -> Iterator[None]:
    """Hold `port` for one deployment while the block runs: refuse if another process has it
    bound, or another `meta-embed serve` claimed it (its workers may not have bound yet)."""
    lock_path = Path(tempfile.gettempdir()) / f"meta-embed-serve-{port}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise PortTaken(f"port {port} is already served by another meta-embed serve (pid {owner}); "
                            "stop it or choose another --port") from None  # fmt: skip
        listening_socket(host, port, reuse_port=False).close()  # nobody else has it bound
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def limited_protocol(header_timeout_s: float, max_header_bytes: int) -> type:
    """uvicorn's httptools protocol closing connections whose request headers take longer than
    `header_timeout_s` or exceed `max_header_bytes` (431)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_bytes, self._in_headers, self._header_timer = 0, True, None
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            if self._in_headers and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            too_large = self._in_headers and self._header_bytes > max_header_bytes
            if too_large and not self.transport.is_closing():
                self.transport.write(RESPONSE_431)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_headers:  # a next request on a kept-alive connection
                self._in_headers, self._header_bytes = True, 0
                self._arm()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return LimitedHttpToolsProtocol


def uvicorn_config(app: Any, cfg: ServingConfig, log_level: str) -> Any:
    """The uvicorn.Config of a server process: its app, log level and the limits of `cfg`.
    uvicorn leaves the handlers to `meta_embed.logs.configure` (log_config=None)."""
    import uvicorn

    http = limited_protocol(cfg.header_timeout_s, cfg.max_header_bytes)
    return uvicorn.Config(app, log_level=log_level, access_log=cfg.access_log, http=http, log_config=None,
                          timeout_keep_alive=cfg.keep_alive_s,
                          limit_concurrency=cfg.max_connections)  # fmt: skip
