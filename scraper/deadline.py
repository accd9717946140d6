"""A hard deadline for each download, whatever the server does.

Read timeouts only fire when a socket stays silent; a server that drips a byte now and then never
trips them, and a check of the clock between reads only runs when a read returns. So each request
runs under a `Deadline`: the connection registers its socket with the current thread's deadline,
and one watchdog thread shuts the socket down when the time is up, which ends any read in progress.
"""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_current = threading.local()


class Deadline:
    """The end time of one request and the sockets it uses; `expired` once the watchdog struck."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._done = False
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            if self._done:
                return
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return  # the request ended in time; its socket may already serve the next one
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once; the pool drops the socket


class _Watchdog:
    """One daemon thread that expires the deadlines of requests still running at their end time."""

    def __init__(self) -> None:
        self._active: set[Deadline] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            self._active.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scrape-deadlines", daemon=True)
                self._thread.start()
            if deadline.at < self._wakes_at:  # usually not: the timeout is the same for every request
                self._cond.notify()

    def remove(self, deadline: Deadline) -> None:
        with self._cond:
            self._active.discard(deadline)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [d for d in self._active if d.at <= now]
                self._active.difference_update(due)
                self._wakes_at = min((d.at for d in self._active), default=now + 60.0)
                if not due:
                    self._cond.wait(timeout=self._wakes_at - now)
            for deadline in due:
                deadline.expire()


_watchdog = _Watchdog()


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Run the body (one request on this thread) under a deadline `seconds` from now."""
    current = Deadline(seconds)
    _current.deadline = current
    _watchdog.add(current)
    try:
        yield current
    finally:
        current.finish()
        _watchdog.remove(current)
        _current.deadline = None


def attach_socket(sock: socket.socket) -> None:
    """Put `sock` under this thread's running deadline, if there is one."""
    current = getattr(_current, "deadline", None)
    if current is not None:
        current.attach(sock)
