"""Running the app: the listening socket (a port in use is one line, not uvicorn's message), uvicorn with a
request-head timeout, and a server log in which repeated lines are summarised.

uvicorn has an idle keep-alive timeout but no limit on how long a client may take to send its request head,
so one slow client per connection could hold sockets forever; `HeadTimeoutH11Protocol` closes a connection
whose head is not complete `head_timeout` seconds after it started (the body has its own timeout in the app).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from cirlab.serving.app import SECURITY_HEADERS, RepeatedLogFilter
from cirlab.utils.errors import CirlabError

#: uvicorn's idle timeout between two requests on a kept-alive connection (its default).
KEEP_ALIVE_S = 5
#: Largest request head h11 buffers (uvicorn's default is the same 16 KiB; stated here so the docs can say it).
MAX_HEAD_BYTES = 16 * 1024


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready for uvicorn to listen on; a CirlabError when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise CirlabError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CirlabError(f"port {port} on {host} is already in use") from None
        raise CirlabError(f"cannot listen on port {port} of {host}: {exc.strerror}") from None
    return sock


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head takes over `head_timeout` seconds."""

    head_timeout: float = 10.0
    _head_timer = None

    def connection_made(self, transport) -> None:  # noqa: ANN001 - asyncio.Transport, as in the parent
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse (bad request line or header, a head over
        MAX_HEAD_BYTES), as a JSON error like every other one; the connection is closed after it."""
        body = json.dumps({"error": f"malformed HTTP request ({msg.rstrip('.')}): bad request line or "
                                    f"headers, or a request head over {MAX_HEAD_BYTES} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def run_server(app: FastAPI, sock: socket.socket, read_timeout_s: float) -> None:
    """Serve `app` on the bound `sock` until Ctrl-C, with the head timeout and summarised logs."""
    protocol = type("CirlabH11Protocol", (HeadTimeoutH11Protocol,), {"head_timeout": read_timeout_s})
    config = uvicorn.Config(app, http=protocol, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S,
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES, lifespan="off")
    server = uvicorn.Server(config)  # configures uvicorn's loggers; the filters go on after that
    ours = logging.getLogger("cirlab.serving")
    if not ours.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    for name in ("uvicorn.error", "cirlab.serving"):
        logging.getLogger(name).addFilter(RepeatedLogFilter())
    server.run(sockets=[sock])
