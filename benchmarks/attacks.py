"""Hostile and careless HTTP clients, on raw sockets (127.0.0.1 only): used by ``benchmarks/chaos.py`` and the
serve hardening tests.

Each attacker is an asyncio coroutine bounded by its own ``seconds`` and reports what it saw (how long the
server kept the connection, the status it answered), so a caller can turn it into a figure.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

# A JSON body that parses to nothing a model can use; each one must be answered 4xx, never 5xx.
def malformed_bodies() -> dict[str, bytes]:
    """Bodies a careless or hostile client sends, by name (all valid UTF-8 unless the name says otherwise)."""
    deep_list = b"[" * 100_000 + b"]" * 100_000
    return {
        "digits_5000": b'{"inputs": ["x"], "parameters": {"max_windows": ' + b"9" * 5000 + b"}}",
        "depth_1000_inputs": b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        "depth_100000_inputs": b'{"inputs": ' + deep_list + b"}",
        "depth_1000_parameters": b'{"inputs": ["x"], "parameters": {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}}",
        "nested_objects_100000": b'{"inputs": ["x"], "parameters": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        "not_json": b"{inputs: [x]",
        "not_utf8": b'{"inputs": ["\xff\xfe"]}',
        "nan": b'{"inputs": ["x"], "parameters": {"max_windows": NaN}}',
        "huge_float": b'{"inputs": ["x"], "parameters": {"max_windows": 1e999}}',
        "empty": b"",
        "list_body": b'["x"]',
    }


@dataclass
class Answer:
    status: int | None  # None: the server closed without an answer
    seconds: float  # from the first byte sent to the answer (or the close)
    body: bytes = b""


async def _read_answer(reader: asyncio.StreamReader, timeout: float) -> tuple[int | None, bytes]:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        return None, b""
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    try:
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        body = b""
    return status, body


def request_head(path: str, length: int, *, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


async def post_raw(port: int, path: str, body: bytes, *, timeout: float = 30.0) -> Answer:
    """One POST of ``body`` as it is (no client library fixing it up)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head(path, len(body)) + body)
        await writer.drain()
        status, answer = await _read_answer(reader, timeout)
        return Answer(status, time.perf_counter() - start, answer)
    finally:
        writer.close()


async def trickle_body(port: int, path: str, *, seconds: float, interval: float = 2.0, declared: int = 100) -> Answer:
    """Headers with ``Content-Length: declared``, then one body byte every ``interval`` s until the server
    answers or closes, or ``seconds`` pass (status None, seconds = the whole run: the server kept it)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head(path, declared))
        await writer.drain()
        answer = asyncio.ensure_future(_read_answer(reader, seconds + 5))
        sent = 0
        while not answer.done() and time.perf_counter() - start < seconds and sent < declared:
            try:
                writer.write(b" ")
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.wait([answer], timeout=interval)
        if answer.done():
            status, body = answer.result()
            return Answer(status, time.perf_counter() - start, body)
        answer.cancel()
        return Answer(None, time.perf_counter() - start)
    finally:
        writer.close()


async def trickle_headers(port: int, *, seconds: float, interval: float = 1.0) -> Answer:
    """A request line and headers one byte every ``interval`` s, never finished: how long until the server closes
    (status None and ``seconds``: still open at the end)."""
    start = time.perf_counter()
    data = b"POST /v1/models/x/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    closed = asyncio.ensure_future(_read_answer(reader, seconds + 5))
    try:
        for byte in data:
            if closed.done() or time.perf_counter() - start >= seconds:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([closed], timeout=interval)
        if closed.done() or await asyncio.wait([closed], timeout=0.5) and closed.done():
            status, body = closed.result()
            return Answer(status, time.perf_counter() - start, body)
        closed.cancel()
        return Answer(None, seconds)
    finally:
        writer.close()


async def hang_up(port: int, path: str, body: bytes, *, after: float) -> None:
    """Send a whole request, then close the connection ``after`` seconds later without reading the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head(path, len(body)) + body)
        await writer.drain()
        await asyncio.sleep(after)
    finally:
        writer.close()


def predict_body(texts: list[str], **parameters: Any) -> bytes:
    return json.dumps({"inputs": texts, **({"parameters": parameters} if parameters else {})}).encode()
