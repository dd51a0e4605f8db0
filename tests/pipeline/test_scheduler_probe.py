"""A --scheduler address where no Dask scheduler speaks: one line, after the connect timeout.

Real sockets on 127.0.0.1: an HTTP server and a listener that accepts and never answers
(distributed's own client waits for their handshake without end), and a closed port.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from pipeline.cluster import SchedulerUnreachableError, connect


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_listener() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never read or answered

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
        for conn in accepted:
            conn.close()


@pytest.fixture
def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("peer", ["http_server", "silent_listener", "closed_port"])
def test_no_scheduler_at_the_address_is_one_line(peer: str, request: pytest.FixtureRequest) -> None:
    address = request.getfixturevalue(peer)
    with pytest.raises(SchedulerUnreachableError) as info:
        with connect(address, timeout=1.0):
            pass
    message = str(info.value)
    assert "\n" not in message and address in message and "within 1 s" in message
