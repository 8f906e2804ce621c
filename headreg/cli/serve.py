"""``headreg serve``: the HTTP server (headreg[serve]); torch is not imported."""

from __future__ import annotations

import os
import sys

import click

from .bundles import VARIANT_CHOICES, load_predictor
from .output import plain, usage_error


@click.command(short_help="Serve bundles over HTTP with batching across requests.", epilog="""\b
Examples:
  headreg serve ./bundle --port 8080
  headreg serve sentiment=./bundle ner=./ner-bundle --threads 2""")
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE [NAME=BUNDLE ...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--max-batch-tokens", default=2048, show_default=True, type=click.IntRange(min=1),
              help="Tokens per batch, across requests (also caps rows x longest row).")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Rows per batch.")
@click.option("--max-concurrent-requests", default=512, show_default=True, type=click.IntRange(min=1),
              help="Requests in flight at once; more are answered 429 with Retry-After.")
@click.option("--max-input-texts", default=128, show_default=True, type=click.IntRange(min=1),
              help="Texts per request; more are answered 422.")
@click.option("--payload-limit", default=2_000_000, show_default=True, type=click.IntRange(min=1),
              help="Bytes per request body; more are answered 413.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="onnxruntime threads per model [default: the CPUs this process may use, container quota included].")
@click.option("--variant", type=click.Choice(VARIANT_CHOICES), default=None,
              help="Model variant for every bundle [default: auto, each bundle's choice for this machine].")
@click.option("--api-key", envvar="HEADREG_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route (native, OpenAI, HF, TEI, v2) except "
                   "/health, /metrics, /v2 and /v2/health/* [env: HEADREG_API_KEY].")
@click.option("--keep-alive", default=75.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds an idle connection stays open (keep it above your load balancer's idle timeout).")
@click.option("--header-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a client may take to send a request's headers; then 408 and the connection closes.")
@click.option("--body-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds the body may pause between two reads; then 408.")
@click.option("--body-total-timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a client may take to send a whole body; then 408 (raise it for slow networks).")
@click.option("--request-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds from a request's last body byte to its answer; past it, 504 and its work is dropped.")
@click.option("--max-windows", default=256, show_default=True, type=click.IntRange(min=1),
              help="Most windows one input may be read in with long_text='window'; a request may ask for fewer.")
@click.option("--max-tokens-in-flight", default=4_194_304, show_default=True, type=click.IntRange(min=1),
              help="Tokens (windows included) of the requests held at once, all models together: a request past "
                   "it is answered 429 (413 when it alone is past it); bounds the memory their tokenized rows hold.")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="One JSON line per request on stderr.")
@click.option("--model-workers", default=None, type=click.IntRange(min=1),
              help="Batches of one model that run at once, each on --threads / N threads [default: an onnxruntime "
                   "bundle runs up to 2 that share all --threads; an OpenVINO variant 1] (docs/serving.md, "
                   "'How batching works').")
@click.option("--cpu-arena/--no-cpu-arena", default=False, show_default=True, envvar="HEADREG_ORT_CPU_ARENA",
              help="onnxruntime's CPU memory arena. Off, every batch's tensors go back to the allocator, which is "
                   "trimmed after big batches: a server's memory does not keep the high-water mark of every batch "
                   "shape it saw (docs/serving.md, 'Memory').")
@click.option("--default-model", default=None, metavar="NAME",
              help="The model the root TEI routes (/embed, /predict, /rerank, ...) answer for [default: the only one served].")
def serve(bundles: tuple[str, ...], host: str, port: int, max_batch_tokens: int, max_batch_size: int,
          max_concurrent_requests: int, max_input_texts: int, payload_limit: int, threads: int | None,
          variant: str | None, api_key: str | None, keep_alive: float, header_timeout: float, body_timeout: float,
          body_total_timeout: float, request_timeout: float, max_windows: int, max_tokens_in_flight: int,
          access_log: bool, model_workers: int | None, cpu_arena: bool, default_model: str | None) -> None:
    """Serve bundles over HTTP with batching across requests (see docs/serving.md).

    A bundle is served under its directory name, or under NAME when given as NAME=PATH.
    """
    from ..errors import require

    for module in ("uvicorn", "starlette", "prometheus_client"):
        try:
            require(module, "serve", "headreg serve")
        except ImportError as exc:
            usage_error(str(exc))
    from ..runtime.cpus import available_cpus
    from ..serve.app import ServeConfig, configure_logging, create_app, listen, serve as run_server
    from ..serve.batcher import auto_workers
    from ..serve.memory import server_memory
    from ..serve.names import parse_bundle_args
    from ..runtime.backends import STREAMS_ENV

    try:
        named = parse_bundle_args(bundles)
    except ValueError as exc:
        usage_error(str(exc))
    if default_model is not None and default_model not in named:
        usage_error(f"--default-model {default_model!r} is not among the served models ({', '.join(named)}); "
                    "name one of them")
    try:
        sock = listen(host, port)
    except OSError as exc:
        usage_error(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port (0 picks a free one) "
                    "or stop what is using this one")
    port = sock.getsockname()[1]
    threads = threads or available_cpus()
    configure_logging(access=access_log)
    trim_memory = server_memory(cpu_arena)  # before the sessions and their threads exist
    os.environ[STREAMS_ENV] = str(model_workers or 1)  # an OpenVINO variant runs each worker's batch in its own stream
    # asked for, each batch running at once gets its share of the threads; by default they share them all
    worker_threads = max(threads // model_workers, 1) if model_workers else threads
    predictors = {
        name: load_predictor(path, threads=worker_threads, variant=variant, max_batch_tokens=max_batch_tokens,
                              batch_size=max_batch_size, max_windows=max_windows)
        for name, path in named.items()
    }
    config = ServeConfig(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                         max_concurrent_requests=max_concurrent_requests, max_input_texts=max_input_texts,
                         payload_limit=payload_limit, api_key=api_key or None, default_model=default_model,
                         request_timeout=request_timeout, body_timeout=body_timeout,
                         body_total_timeout=body_total_timeout, trim_memory=trim_memory,
                         workers=model_workers, max_tokens_in_flight=max_tokens_in_flight)
    served = ", ".join(f"{name} ({plain(p.head)}, {p.variant}"
                       f"{_at_once(model_workers or auto_workers(p), model_workers and worker_threads)})"
                       for name, p in predictors.items())
    click.echo(f"serving {served} on http://{host}:{port} with {threads} thread(s) per model", err=True)
    sys.exit(run_server(create_app(predictors, config), host=host, port=port, keep_alive=keep_alive,
                        header_timeout=header_timeout, sock=sock))


def _at_once(workers: int, split_threads: int | None) -> str:
    if workers == 1:
        return ""
    share = f"{split_threads} thread(s) each" if split_threads else "sharing the threads"
    return f", {workers} batches at once, {share}"
