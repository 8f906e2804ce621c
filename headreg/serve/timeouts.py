"""Slow and vanished clients: header and body timeouts, and handlers cancelled when their client hangs up.

uvicorn has no timeout for receiving a request: ``timeout_keep_alive`` only covers the idle time between two
requests and is reset by every byte, so a client that sends one header byte a second keeps its connection
forever, and ASGI middleware cannot see a request before its headers are complete. Two pieces close that:

- :func:`guarded_protocol`: uvicorn's HTTP protocol (httptools when installed, else h11) with a header
  deadline. From the moment a connection opens, or the first byte of its next request arrives, the whole
  header block must arrive within ``header_timeout`` seconds, or the server answers 408 and closes.
- :class:`ClientWatch`: ASGI middleware. While a handler reads the body, each read waits at most
  ``body_timeout`` seconds (idle: nginx's ``client_body_timeout``), and the whole body must arrive within
  ``body_total_timeout``; either is a 408 with ``Connection: close``. Once the body is in, it watches the
  connection: when the client goes away before its answer, the handler is cancelled (Starlette itself does
  not cancel it), which drops the request's queued rows in the Batcher and frees its slot at once.

Defaults (``headreg serve`` options of the same names), chosen in the range proxies in front of servers use:
header 60 s and body idle 60 s (nginx ``client_header_timeout`` / ``client_body_timeout``), body total 300 s
(a 2 MB body, the default ``--payload-limit``, at 56 kbit/s takes about 290 s), keep-alive 75 s (nginx's
``keepalive_timeout``; above the 60 s idle timeout of common load balancers). A client on a slower network
raises them; none of them bounds how long the model may take (that is ``--request-timeout``).
"""

from __future__ import annotations

import asyncio
import json
import traceback
from typing import Any

from .errors import RequestError

HEADER_TIMEOUT = 60.0
# Bytes of request line and headers a request may have (nginx takes 8 kB lines in 32 kB of buffers, h11 16 kB):
# the httptools parser buffers a header value whole, so without a cap a client could send gigabytes of one
# header within the header timeout.
MAX_HEADER_BYTES = 65_536
BODY_TIMEOUT = 60.0
BODY_TOTAL_TIMEOUT = 300.0
KEEP_ALIVE = 75.0


def _closing_answer(status: int, reason: str, error: str) -> bytes:
    """A whole HTTP answer that closes the connection, with the server's JSON error body."""
    body = json.dumps({"error": error, "status": status}, separators=(",", ":")).encode()
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


def _base_protocol() -> type:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # httptools is optional (uvicorn[standard]); h11 is always there
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


# The route label of answers given before a request's headers were complete (no route was known yet).
HEADERS_ROUTE = "(headers)"


def guarded_protocol(header_timeout: float, metrics: Any = None) -> type:
    """A uvicorn HTTP protocol class (for ``uvicorn.Config(http=...)``) that closes a connection whose request
    headers take longer than ``header_timeout`` seconds (answering 408) or pass MAX_HEADER_BYTES (431).

    ``metrics`` (a :class:`~headreg.serve.metrics.ServeMetrics`): each such answer is counted in
    ``headreg_requests_total`` with the route ``(headers)``; no ASGI middleware ever sees these requests.
    """
    base = _base_protocol()

    def count(status: int) -> None:
        if metrics is not None:
            metrics.requests.labels(HEADERS_ROUTE, "", str(status), "http").inc()

    answer = _closing_answer(408, "Request Timeout",
                             f"the request headers did not arrive within {int(header_timeout)} seconds (--header-timeout)")
    too_large = _closing_answer(431, "Request Header Fields Too Large",
                                f"the request line and headers are larger than {MAX_HEADER_BYTES} bytes")

    class HeaderDeadlineProtocol(base):  # type: ignore[misc, valid-type]
        _header_deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _header_tail = b""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            if self._header_deadline is None and (cycle is None or cycle.response_complete):
                self._arm()  # the first byte of the next request on a kept-alive connection
            if self._header_deadline is not None:
                # Counted up to the blank line that ends the headers, and before the parser sees the bytes: a
                # read that completes an oversized header block is refused too (body bytes beside it are not
                # headers). The last 3 bytes of the previous read find a blank line split between two reads.
                seen = self._header_tail + data
                ends = [at + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (at := seen.find(mark)) >= 0]
                self._header_bytes += max(min(ends) - len(self._header_tail), 0) if ends else len(data)
                self._header_tail = seen[-3:]
                if self._header_bytes > MAX_HEADER_BYTES:
                    self._disarm()
                    if not self.transport.is_closing():
                        self.transport.write(too_large)
                        self.transport.close()
                        count(431)
                    return
            super().data_received(data)
            if self.cycle is not cycle:  # the parser completed a request's headers: the handler runs now
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_bytes, self._header_tail = 0, b""
            self._header_deadline = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(answer)
                count(408)
            self.transport.close()

    HeaderDeadlineProtocol.__name__ = HeaderDeadlineProtocol.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadlineProtocol


class ClientWatch:
    """ASGI middleware: body read timeouts (408), and a handler cancelled when its client hangs up.

    ``body``, ``body_total``: seconds a client may take between two body reads, and for its whole body.
    ``metrics`` (a :class:`~headreg.serve.metrics.ServeMetrics`): counts the requests whose client went away
    before its answer started, and shows the bodies still arriving. A cancelled request's access-log status is
    499 (nginx's "client closed request").
    """

    def __init__(self, app: Any, metrics: Any = None, *, body: float = BODY_TIMEOUT,
                 body_total: float = BODY_TOTAL_TIMEOUT):
        self.app = app
        self.metrics = metrics
        self.body = body
        self.body_total = body_total

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_total
        gone = asyncio.Event()
        state = {"body_done": False, "answered": False}
        handler: asyncio.Task | None = None
        watcher: asyncio.Task | None = None

        async def watch() -> None:
            message = await receive()  # after the body, uvicorn answers only on disconnect or response complete
            if message["type"] == "http.disconnect" and not state["answered"]:
                gone.set()
                scope.setdefault("headreg.log", {})["status"] = 499
                if self.metrics is not None:
                    self.metrics.client_disconnects.inc()
                if handler is not None:
                    handler.cancel()

        async def guarded_receive() -> dict:
            nonlocal watcher
            if state["body_done"]:
                # The handler listens for a disconnect itself (Starlette does, for streaming): the watcher owns
                # the connection's receive now, so wait for its verdict.
                await gone.wait()
                return {"type": "http.disconnect"}
            wait = min(self.body, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except asyncio.TimeoutError:
                total = deadline - loop.time() <= 0
                raise RequestError(
                    408, f"the request body did not arrive within {self.body_total:g} seconds "
                    "(--body-total-timeout)" if total else
                    f"no part of the request body arrived for {self.body:g} seconds (--body-timeout)",
                    {"Connection": "close"},
                ) from None
            if message["type"] == "http.disconnect":
                body_in()
                gone.set()
            elif not message.get("more_body", False):
                body_in()
                watcher = asyncio.ensure_future(watch())
            return message

        def body_in() -> None:
            if not state["body_done"]:
                state["body_done"] = True
                if receiving is not None:
                    receiving.dec()

        async def watched_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["answered"] = True
            await send(message)

        receiving = self.metrics.receiving if self.metrics is not None and scope["method"] not in ("GET", "HEAD") else None
        if receiving is not None:
            receiving.inc()
        handler = asyncio.ensure_future(self.app(scope, guarded_receive, watched_send))
        try:
            await asyncio.shield(handler)
        except asyncio.CancelledError:
            if not handler.done():  # this task itself is cancelled (shutdown): take the handler with it
                handler.cancel()
                raise
            if not gone.is_set():
                raise
            release_task(handler)
        finally:
            body_in()
            if watcher is not None:
                watcher.cancel()


def release_task(task: asyncio.Task) -> None:
    """Free what a handler cancelled mid-request still holds, now rather than at the garbage collector's next full
    collection.

    A cancelled task keeps its ``CancelledError``; the error's traceback keeps every frame of the request (its
    body, its parsed texts, the Batcher's tokenized job), and those frames reach the task again through this
    middleware's closures: a reference cycle. Full collections are rare in a process with a big heap, and the
    tokenizer's encodings live in native memory the collector does not count: the chaos benchmark's hang-ups
    (4 clients sending 8 windowed texts each) left ~100 MB of such cycles per 30 s, all freed by one
    ``gc.collect()``. Taking the error out of the task and clearing its frames breaks the cycle.
    """
    try:
        task.result()
    except asyncio.CancelledError as exc:
        traceback.clear_frames(exc.__traceback__)
    except BaseException:  # noqa: BLE001 - answered or failed on its own: nothing is held
        pass
