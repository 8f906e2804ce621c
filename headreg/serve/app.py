"""The HTTP server: Starlette routes on uvicorn, one :class:`~headreg.serve.batcher.Batcher` per bundle.

>>> from headreg.runtime import Predictor
>>> app = create_app({"sentiment": Predictor("bundle/")})      # doctest: +SKIP
>>> serve(app, host="127.0.0.1", port=8080)                     # doctest: +SKIP

Routes (JSON): ``GET /health``, ``GET /info``, ``GET /metrics`` (Prometheus text), ``GET /v1/models``,
``POST /v1/models/{name}/predict``, ``POST /v1/models/{name}/embed``; and the routes of the protocols clients
already speak (OpenAI, Hugging Face Inference, TEI, Open Inference Protocol v2: ``headreg.serve.protocols``),
each a thin adapter over the one inference path (``_State.infer``). See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._version import __version__
from ..runtime.inputs import InputError
from . import protocols
from .batcher import Batcher, InferenceError, TokenBudget
from .metrics import ServeMetrics
from .responses import FastJSONResponse
from .limits import parse_json_body
from .protocols.common import endpoint, json_error
from .schema import Call, RequestError, model_info, parse_request
from .timeouts import BODY_TIMEOUT, BODY_TOTAL_TIMEOUT, HEADER_TIMEOUT, KEEP_ALIVE, ClientWatch, guarded_protocol

access_log = logging.getLogger("headreg.serve.access")
log = logging.getLogger("headreg.serve")
T = TypeVar("T")

WARMUP_TEXT = "warm up"
# Bodies up to this size are parsed on the event loop (well under a millisecond); bigger ones in a thread.
INLINE_BODY_BYTES = 65_536
# A proxy in front gives up on an answer after 60 s by default (nginx proxy_read_timeout): work past that
# point is answered to nobody.
REQUEST_TIMEOUT = 60.0
# 4 M tokens of admitted requests: ~0.4-1.1 GB of tokenized rows, and minutes of work for a small CPU server
# (MiniLM on 2 cores runs ~8,000 tokens/s), so it refuses nothing that could be answered within REQUEST_TIMEOUT.
# Without a bound, requests within every per-request limit (2 MB of windowed text at the smallest window step:
# ~7.6 M tokens, 1.8 GB) admitted one after another would each hold their memory until their 504.
MAX_TOKENS_IN_FLIGHT = 4_194_304


@dataclass
class ServeConfig:
    """The server's limits (the ``headreg serve`` options of the same names)."""

    max_batch_tokens: int = 2048
    max_batch_size: int = 32
    max_concurrent_requests: int = 512
    max_input_texts: int = 128
    payload_limit: int = 2_000_000
    api_key: str | None = None
    default_model: str | None = None  # answers the root TEI routes (/embed, /predict, ...); one model: that one
    request_timeout: float = REQUEST_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    body_total_timeout: float = BODY_TOTAL_TIMEOUT
    # glibc's free memory handed back after big batches (headreg.serve.memory); what onnxruntime's arena would
    # keep anyway gains nothing from it, so headreg serve sets it when the arena is off (--no-cpu-arena)
    trim_memory: bool = False
    # batches of one model running at once (headreg serve --model-workers); None: Batcher's auto_workers
    workers: int | None = None
    # tokens of the requests held at once, all models together (their tokenized jobs: ~100-270 bytes per token)
    max_tokens_in_flight: int = MAX_TOKENS_IN_FLIGHT


class _State:
    def __init__(self, predictors: Mapping[str, Any], config: ServeConfig, metrics: ServeMetrics):
        self.config = config
        self.metrics = metrics
        self.predictors = dict(predictors)
        budget = TokenBudget(config.max_tokens_in_flight)
        self.batchers = {
            name: Batcher(name, predictor, max_batch_tokens=config.max_batch_tokens,
                          max_batch_size=config.max_batch_size, metrics=metrics, trim_memory=config.trim_memory,
                          workers=config.workers, budget=budget)
            for name, predictor in self.predictors.items()
        }
        self.models = [model_info(name, p) for name, p in self.predictors.items()]
        self.ready = False
        self.in_flight = 0
        self.started = int(time.time())
        names = list(self.predictors)
        if config.default_model is not None and config.default_model not in self.predictors:
            raise ValueError(f"--default-model {config.default_model!r} is not served; served: {', '.join(names)}")
        self.default_model = config.default_model or (names[0] if len(names) == 1 else None)

    def batcher(self, name: str) -> Batcher:
        """The model's queue, or the 404 that lists what is served."""
        batcher = self.batchers.get(name)
        if batcher is None:
            raise RequestError(404, f"no model named {name!r}; this server serves: {', '.join(self.batchers)}")
        return batcher

    @staticmethod
    def note(request: Request, **fields: Any) -> None:
        """Fields for this request's access-log line and metrics labels (see AccessLog)."""
        request.scope.setdefault("headreg.log", {}).update(fields)

    async def body(self, request: Request, decode: Callable[[bytes], Any] = parse_json_body) -> Any:
        """The body within ``--payload-limit``, decoded (JSON within limits:
        :func:`~headreg.serve.limits.parse_json_body`); a big body in a worker thread, so the event loop keeps
        answering other clients meanwhile (a 2 MB body takes tens of milliseconds)."""
        body = await _read_body(request, self.config.payload_limit)
        if len(body) <= INLINE_BODY_BYTES:
            return decode(body)
        return await asyncio.get_running_loop().run_in_executor(None, decode, body)

    async def infer(self, request: Request, parse: Callable[[Any], Call],
                    decode: Callable[[bytes], Any] = parse_json_body) -> tuple[Call, Any, dict[str, Any]]:
        """The one path of every inference request, native or protocol, behind the route's API key check
        (:func:`~headreg.serve.protocols.common.endpoint`): the body (``--payload-limit``; the body timeouts are
        ClientWatch's), ``decode`` (JSON within limits; v2's binary tensors), ``parse`` (the route's own request
        shape -> :class:`Call`), then the concurrency limit (a slot is taken only once the body is in), the
        model's queue within ``--request-timeout``.

        Returns the call, ``Predictor.predict``/``embed``'s result for it and the request's stats (``rows``,
        ``tokens``). Raises :class:`RequestError`; each protocol renders it in its own error shape. A new
        per-request limit or timeout belongs here: every protocol adapter then has it too.
        """
        # A request takes a slot only once its body is in: a client trickling its body holds a connection (bounded
        # by the body timeouts), never a slot an honest client could use.
        call = parse(await self.body(request, decode))
        batcher = self.batcher(call.model)
        self.note(request, model=call.model, inputs=len(call.inputs))
        stats: dict[str, Any] = request.scope.setdefault("headreg.log", {})
        result = await self.guarded(
            call.model, lambda: batcher.submit(call.inputs, kind=call.kind, parameters=call.parameters, stats=stats))
        return call, result, stats

    async def guarded(self, model: str, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()`` in a concurrency slot (429 past ``--max-concurrent-requests``) within
        ``--request-timeout`` (504; the awaiting task is cancelled, so the Batcher drops the request's queued
        rows). What :meth:`infer` runs the model's queue in, and what a route's other work per request (TEI's
        ``/tokenize``) runs in, so it is held to the same limits."""
        if self.in_flight >= self.config.max_concurrent_requests:
            raise RequestError(
                429, f"the server is at its limit of {self.config.max_concurrent_requests} concurrent requests "
                "(--max-concurrent-requests); retry shortly", {"Retry-After": "1"},
            )
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            timeout = self.config.request_timeout
            try:
                try:
                    return await asyncio.wait_for(work(), timeout)
                except BaseException as exc:
                    # wait_for's finished frame holds its inner task, which holds this error, whose traceback holds
                    # that frame: a cycle keeping the request's texts and tokenized job until a full collection
                    # (rare with a big heap). Clearing the finished frames breaks it (timeouts.release_task's twin).
                    traceback.clear_frames(exc.__traceback__)
                    raise
            except TimeoutError:
                raise RequestError(
                    504, f"the request was not answered within {timeout:g} seconds (--request-timeout) and was "
                    "dropped; send fewer or shorter texts per request, or retry when the server is less busy"
                ) from None
            except RequestError:
                raise
            except InputError as exc:
                raise RequestError(422, str(exc)) from exc
            except InferenceError as exc:
                log.error("model %s: %s", model, exc)
                raise RequestError(500, f"inference failed for this request: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - one request's failure is that request's 500, nothing more
                log.exception("model %s: unexpected failure", model)
                raise RequestError(500, f"inference failed for this request: {type(exc).__name__}: {exc}") from exc
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)


def create_app(predictors: Mapping[str, Any], config: ServeConfig | None = None) -> Any:
    """An ASGI app serving ``predictors`` (name -> loaded Predictor); /health turns 200 once each is warmed up."""
    if not predictors:
        raise ValueError("create_app needs at least one model")
    metrics = ServeMetrics()
    state = _State(predictors, config or ServeConfig(), metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        for batcher in state.batchers.values():
            batcher.start()
        warmup = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warmup.cancel()
            # uvicorn has answered every in-flight request by now; anything still queued runs before exit.
            await asyncio.gather(*(batcher.close() for batcher in state.batchers.values()))

    async def health(request: Request) -> Response:
        if state.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})

    async def info(request: Request) -> Response:
        return JSONResponse({
            **protocols.root_info(state),
            "headreg_version": __version__,
            "ready": state.ready,
            "models": [{"name": m["name"], "head": m["head"], "variant": m["variant"],
                        "bundle": str(state.predictors[m["name"]].bundle_dir)} for m in state.models],
            "limits": {k: v for k, v in vars(state.config).items() if k != "api_key"},
        })

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def models(request: Request) -> Response:
        return JSONResponse({"models": state.models, **protocols.model_list(state)})

    def handler(kind: str):
        async def run(request: Request) -> Response:
            name = request.path_params["name"]
            state.batcher(name)  # an unknown model is a 404 before the body is read

            def call(payload: Any) -> Call:
                return Call(name, kind, *parse_request(payload, max_inputs=state.config.max_input_texts))

            _, result, _ = await state.infer(request, call)
            if kind == "embed":
                return FastJSONResponse({"model": name, "embeddings": result})
            return JSONResponse({"model": name, "outputs": result})

        return run

    table = [("/health", health, "GET"), ("/info", info, "GET"), ("/metrics", metrics_route, "GET"),
             ("/v1/models", models, "GET"), ("/v1/models/{name}/predict", handler("predict"), "POST"),
             ("/v1/models/{name}/embed", handler("embed"), "POST")]
    public = (health, metrics_route)
    app = Starlette(
        routes=[
            *(Route(path, endpoint(state, "native", path, run, _render_error, public=run in public), methods=[method])
              for path, run, method in table),
            *protocols.routes(state),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    watched = ClientWatch(app, metrics, body=state.config.body_timeout, body_total=state.config.body_total_timeout)
    return AccessLog(watched, metrics)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` bytes (header or bytes received)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        413, f"the request body has {'at least ' if size else ''}{size} bytes; this server takes at most {limit} "
        "(--payload-limit): send fewer or shorter texts per request"
    )


def _render_error(exc: RequestError) -> Response:
    """The native routes' error shape, which :func:`_http_error` gives Starlette's own 404 and 405 too."""
    return json_error(exc, {"error": exc.message, "status": exc.status})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) as the same JSON as every other error."""
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no route {request.method} {request.url.path}; the routes are GET /health, /info, /metrics, "
             "/v1/models and POST /v1/models/{name}/predict, /v1/models/{name}/embed, and the OpenAI, Hugging Face, "
             "TEI and Open Inference Protocol v2 routes listed in docs/serving.md",
        405: f"{request.url.path} does not take {request.method}",
    }.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": message, "status": exc.status_code}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _warm_up(state: _State) -> None:
    """One request per model through its queue, so the first real request does not pay for onnxruntime's setup."""
    for name, batcher in state.batchers.items():
        try:
            await batcher.submit([WARMUP_TEXT], kind="predict")
        except Exception:  # noqa: BLE001 - a model that cannot predict one text never turns /health green
            log.exception("model %s failed its warm-up request; /health stays 503", name)
            return
    state.ready = True
    log.info("ready: %s", ", ".join(state.batchers))


class AccessLog:
    """ASGI middleware: one JSON line per request on the access logger, and the request metrics.

    The route label is the route's template (``/v1/models/{name}/predict``), never the raw path, so a client
    probing random paths cannot grow the metrics without bound.
    """

    def __init__(self, app: Any, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        fields: dict[str, Any] = {}
        scope["headreg.log"] = fields
        status: int | None = None

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            if status is None:  # no answer: the client went away (499, set by ClientWatch) or the app failed
                status = fields.get("status", 500)
            route, model, protocol = fields.get("route", "other"), fields.get("model", ""), fields.get("protocol", "native")
            self.metrics.requests.labels(route, model, str(status), protocol).inc()
            self.metrics.request_seconds.labels(route, model, protocol).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({
                    "time": round(time.time(), 3), "method": scope.get("method"), "path": scope.get("path"),
                    "status": status, "protocol": protocol, "model": model or None, "inputs": fields.get("inputs"), "rows": fields.get("rows"),
                    "latency_ms": round(seconds * 1000, 2),
                    "client": (scope.get("client") or [None])[0],
                }))


def configure_logging(access: bool = True, level: int = logging.INFO) -> None:
    """JSON access lines and server messages on stderr (uvicorn's own access log stays off)."""
    for logger, form, logger_level in ((access_log, "%(message)s", logging.INFO if access else logging.WARNING),
                                       (log, "%(levelname)s %(name)s: %(message)s", level)):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(form))
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logger_level)


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (uvicorn's way: SO_REUSEADDR, IPv6 for a host with a colon).

    Bound before the bundles load, so a port in use is reported at once as the user's mistake, and handed to
    uvicorn, so nothing can take the port in between. Port 0 takes a free one (``getsockname()`` says which).
    Raises OSError.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8080, graceful_timeout: float = 30.0,
          keep_alive: float = KEEP_ALIVE, header_timeout: float = HEADER_TIMEOUT, sock: socket.socket | None = None) -> int:
    """Run ``app`` on uvicorn until SIGTERM/SIGINT; in-flight requests are answered; returns 0.

    ``keep_alive``: seconds an idle connection stays open. Longer than the idle timeout of common load
    balancers (60 s), so a balancer never sends a request down a connection this server is just closing
    (uvicorn's 5 s default turns that race into sporadic 502s and client read errors). ``header_timeout``:
    seconds a client may take to send a request's headers (see :mod:`headreg.serve.timeouts`).

    uvicorn re-raises the signal it caught after its graceful shutdown, which would kill the process with
    status 143 after everything went right. The handlers installed here are what it restores before
    re-raising: they do nothing, so a graceful stop exits 0. ``sock``: a socket from :func:`listen` to serve on
    (``host``/``port`` are then only what the config reports).
    """
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=graceful_timeout, timeout_keep_alive=keep_alive, server_header=False,
        http=guarded_protocol(header_timeout, metrics=getattr(app, "metrics", None)),
    )
    server = uvicorn.Server(config)
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: stopped.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        return 1
    log.info("stopped")
    return 0
