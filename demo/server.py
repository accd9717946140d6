"""A loopback HTTP server that records every request before answering it.

The demo gallery and the tests' websites are both built on it, so a test (or a benchmark) can assert
on what a server saw: which paths, in what order, with which headers, when.

    class Handler(RecordingHandler):
        def do_GET(self) -> None:
            self.owner.record(self.path)  # before answering: a client with its answer finds it logged
            ...

    with RecordingServer(Handler) as server:
        requests.get(server.url("/"))
        assert server.requests() == ["/"]
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class RecordingServer(Generic[Entry]):
    """A threaded HTTP server on `host` (a loopback address), serving from a daemon thread.

    Use as a context manager, or call start() and stop(). bind() alone reserves the port, for
    content that has to carry its own absolute URLs before the first request is served.
    """

    def __init__(self, handler: type["RecordingHandler"], host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler, self.host, self.port = handler, host, port
        self._log: list[Entry] = []
        self._log_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def bind(self) -> None:
        """Listen on the address; with port 0 the system picks a free port, read back into `port`."""
        if self._server is None:
            self._server = _Server((self.host, self.port), self.handler, self)
            self.port = self._server.server_address[1]

    def start(self) -> "RecordingServer[Entry]":
        self.bind()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, so only when it runs
            self._server.shutdown()
            self._thread.join()
        if self._server is not None:
            self._server.server_close()
        self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    # ------------------------------------------------------------ what the server saw

    def record(self, entry: Entry) -> None:
        """Called by the handler for each request, before it answers."""
        with self._log_lock:
            self._log.append(entry)

    def requests(self) -> list[Entry]:
        """Every request recorded so far, oldest first (a copy)."""
        with self._log_lock:
            return list(self._log)

    def clear(self) -> None:
        with self._log_lock:
            self._log.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, owner: RecordingServer) -> None:
        self.owner = owner
        super().__init__(address, handler)


class RecordingHandler(BaseHTTPRequestHandler):
    """The base of the handlers: keep-alive as real servers do, quiet, `owner` is the RecordingServer."""

    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes: neither waits for an ACK

    @property
    def owner(self) -> RecordingServer:
        return self.server.owner

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # the server's own log records every request; stderr stays quiet
