"""Prometheus metrics of one server: a registry per app, so two apps in one process (tests) never mix counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Milliseconds to tens of seconds: a single short text on a small encoder up to a saturated queue.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ServeMetrics:
    """Request counts and latencies by route/model/status; queue depth, batches, rows and tokens by model."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "headreg_requests", "HTTP requests answered, by route, model, status and protocol (native, openai, hf, tei, v2; http for the "
            "408/431 answered before a request's headers were complete, route (headers)).",
            ["route", "model", "status", "protocol"], registry=registry,
        )
        self.request_seconds = Histogram(
            "headreg_request_duration_seconds", "End-to-end latency of a request, from arrival to the last byte sent.",
            ["route", "model", "protocol"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge("headreg_requests_in_flight", "Inference requests admitted and not yet answered.",
                               registry=registry)
        self.queue_rows = Gauge("headreg_queue_rows", "Rows waiting in a model's queue for a batch.", ["model"],
                                registry=registry)
        self.batch_rows = Histogram("headreg_batch_size", "Rows per batch run by the model.", ["model"],
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.batch_tokens = Histogram(
            "headreg_batch_tokens", "Padded tokens (rows x longest row) per batch run by the model.", ["model"],
            buckets=BATCH_TOKEN_BUCKETS, registry=registry,
        )
        self.inference_seconds = Histogram(
            "headreg_inference_duration_seconds", "Time the model took to run one batch.", ["model"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.receiving = Gauge(
            "headreg_requests_receiving", "Requests whose headers are in and whose body is still arriving (no slot held).",
            registry=registry,
        )
        self.client_disconnects = Counter(
            "headreg_client_disconnects", "Requests whose client went away before the answer; their work was dropped.",
            registry=registry,
        )
        self.rows = Counter("headreg_rows", "Rows run through the model.", ["model"], registry=registry)
        self.tokens = Counter("headreg_tokens", "Tokens (without padding) run through the model.", ["model"],
                              registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
