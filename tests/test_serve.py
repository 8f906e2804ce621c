"""``headreg serve``: the real command in a subprocess on 127.0.0.1, called over real HTTP with httpx.

One server serves five bundles (four built-in heads and the CRF plugin) for most tests; small servers
of their own cover the concurrency limit, a failing postprocess and SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import pip_install, session_dir, write_plugin
from prometheus_client.parser import text_string_to_metric_families
from test_runtime_predictor import NER_LABELS, tiny_bundle

from headreg.runtime import Predictor

pytestmark = pytest.mark.slow  # real `headreg serve` processes over HTTP, five exported bundles

API_KEY = "test-key-3f9a"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HEADS = ("seq_cls", "multi_label", "regression", "token_cls", "crf")
# Distinct texts, so a result that went to the wrong request shows up as a wrong answer.
TEXTS = [
    "The service was excellent and the food arrived quickly.",
    "I would not recommend this hotel to anyone.",
    "Angela Merkel met Emmanuel Macron in Paris.",
    "ok",
    "",
    "Meh. It was fine, I guess, though the second half dragged on far too long for my taste.",
    "Apple announced new MacBook Pro models in Cupertino on Tuesday.",
    "¿Dónde está la biblioteca? Ça va très bien, merci!",
    "Berlin is the capital of Germany and its largest city.",
    "word " * 300,  # longer than max_length: truncated like the Predictor does
    "Emoji 🎉 and CJK 東京 text",
    "Tabs\tand\nnewlines   and\u00a0odd spaces",
]
# Runs the server with torch and transformers made unimportable: any import of them fails the server.
TORCH_FREE_MAIN = (
    "import sys\n"
    "sys.modules['torch'] = None\n"
    "sys.modules['transformers'] = None\n"
    "from headreg.cli import main\n"
    "main()\n"
)
FRAGILE_PLUGIN = """
from headreg import hookimpl

def post(rows, context):
    from headreg.runtime.postprocess import seq_cls
    if any("explode" in str(text) for text in context.texts):
        raise RuntimeError("this postprocess fails on purpose")
    return seq_cls(rows, context)

@hookimpl
def register_heads(register):
    register(name="fragile", cls="fragile_plugin.head:Head", task="sequence-classification",
             postprocess="fragile_plugin:post", postprocess_contract=2)
"""


# --- servers -------------------------------------------------------------------------------------------------------


class Server:
    """``headreg serve`` in a subprocess; stderr (the JSON access log) goes to a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None):
        """``port=0``: the server picks a free port, read from its "serving ... on http://..." line."""
        self.port = _free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port or 'any'}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
        full_env.update(env or {})
        self._stderr = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", TORCH_FREE_MAIN, "serve", *args, "--port", str(self.port), "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=self._stderr, env=full_env,
        )
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 90.0) -> None:
        import re

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            if self.port == 0:
                announced = re.search(r"on http://127\.0\.0\.1:(\d+) ", self.log.read_text())
                if announced is None:
                    time.sleep(0.1)
                    continue
                self.port = int(announced.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not healthy after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._stderr.close()

    def access_lines(self) -> list[dict]:
        lines = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bundles() -> dict[str, Path]:
    found = {head: tiny_bundle(head) for head in HEADS if head != "crf"}
    found["crf"] = crf_bundle()
    return found


def crf_bundle() -> Path:
    """The CRF plugin's head (pip-installed in this environment) on a tiny BERT, exported once per session."""
    out = session_dir("serve-bundles") / "crf"
    if not out.is_dir():
        import torch

        from headreg import attach_head
        from headreg.export.pipeline import ExportOptions, export_onnx
        from headreg.testing import load_tokenizer, tiny_backbone

        model = attach_head(tiny_backbone("bert"), "crf", num_labels=5, id2label=NER_LABELS).eval()
        with torch.no_grad():
            for parameter in model.head.parameters():
                parameter.mul_(20.0)
        export_onnx(model, out, tokenizer=load_tokenizer(), options=ExportOptions(exporter="torchscript"))
    return out


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    """Five bundles at once (one named NAME=PATH), an API key from the environment, small limits."""
    args = [str(bundles["seq_cls"]), *(f"{head}={bundles[head]}" for head in HEADS if head != "seq_cls")]
    srv = Server(tmp_path_factory.mktemp("serve"), *args, "--max-input-texts", "16", "--payload-limit", "20000",
                 "--max-batch-size", "8", "--max-batch-tokens", "512", env={"HEADREG_API_KEY": API_KEY})
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def predictors(bundles) -> dict[str, Predictor]:
    return {head: Predictor(path, threads=1) for head, path in bundles.items()}


def post(url: str, body, **kwargs) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    if isinstance(body, (bytes, str)):
        return httpx.post(url, content=body, headers=headers, timeout=30, **kwargs)
    return httpx.post(url, json=body, headers=headers, timeout=30, **kwargs)


def assert_same(got, expected, path="output"):
    """JSON-equal, floats within 1e-4 (onnxruntime may round differently for another batch shape)."""
    if isinstance(expected, float):
        assert isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-4), \
            f"{path}: {got} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), f"{path}: keys {sorted(got)} != {sorted(expected)}"
        for key in expected:
            assert_same(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, list) and len(got) == len(expected), f"{path}: {got!r} != {expected!r}"
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f"{path}[{index}]")
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"


# --- the API -------------------------------------------------------------------------------------------------------


def test_health_info_and_models_describe_every_bundle(server, predictors):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{server.url}/info", headers=AUTH).json()
    import headreg

    assert info["headreg_version"] == headreg.__version__ and info["ready"] is True
    assert [m["name"] for m in info["models"]] == list(HEADS)
    models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["models"]}
    assert list(models) == list(HEADS)
    for name, predictor in predictors.items():
        entry = models[name]
        assert entry["head"] == predictor.head and entry["labels"] == predictor.labels
        assert entry["variant"] == predictor.variant and predictor.variant in entry["variants"]
        assert entry["max_length"] == predictor.max_length == 128 and "truncated" in entry["truncation"]
    assert models["seq_cls"]["task"] == "sequence-classification"
    assert models["crf"]["task"] == "token-classification" and models["crf"]["level"] == "token"
    assert models["multi_label"]["labels"] == ["toxic", "spam", "off_topic"]


def test_outputs_equal_predictor_predict_under_concurrent_clients(server, predictors):
    """Many clients at once over every head; each response holds exactly its own inputs' results."""
    pairs = [("A man plays guitar.", "Someone makes music."), ("Paris is in France.", "Berlin is in Germany.")]
    parameters = {
        "multi_label": {"thresholds": 0.3},
        "token_cls": {"aggregation": "max", "long_text": "window", "window_stride": 16},  # long texts: several rows
        "crf": {"aggregation": "first"},
        "seq_cls": {"long_text": "window", "window_reduce": "max"},
    }
    calls = []  # (model, inputs, parameters)
    for round_ in range(4):
        for offset, head in enumerate(HEADS):
            for size in (1, 2, 3):
                start = (round_ * 7 + offset * 3 + size) % len(TEXTS)
                inputs = [TEXTS[(start + k) % len(TEXTS)] for k in range(size)]
                if head in ("seq_cls", "multi_label") and size == 3:
                    inputs[1] = pairs[round_ % 2]
                calls.append((head, inputs, parameters.get(head, {}) if round_ % 2 else {}))
    for head in ("token_cls", "seq_cls", "crf"):  # a text of several windows beside a short one
        calls.append((head, [TEXTS[9], TEXTS[2]], {**parameters[head], "long_text": "window"}))

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as client:
            async def one(head, inputs, params):
                body = {"inputs": [list(x) if isinstance(x, tuple) else x for x in inputs]}
                if params:
                    body["parameters"] = params
                return await client.post(f"/v1/models/{head}/predict", json=body)

            return await asyncio.gather(*(one(*call) for call in calls))

    responses = asyncio.run(run())
    for (head, inputs, params), response in zip(calls, responses):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == head
        expected = json.loads(json.dumps(predictors[head].predict(inputs, **params)))
        assert_same(body["outputs"], expected, f"{head}{inputs!r:.60}")


def test_embed_returns_pooled_output_per_input(server, predictors):
    inputs = [TEXTS[0], TEXTS[3], ["A man plays guitar.", "Someone makes music."]]
    response = post(f"{server.url}/v1/models/regression/embed", {"inputs": inputs})
    assert response.status_code == 200, response.text
    expected = predictors["regression"].embed([TEXTS[0], TEXTS[3], ("A man plays guitar.", "Someone makes music.")])
    body = response.json()
    assert body["model"] == "regression" and len(body["embeddings"]) == 3
    assert_same(body["embeddings"], expected.tolist())
    # the long-text options of Predictor.embed, through "parameters" as for predict
    long = ["word " * 300, TEXTS[0]]
    options = {"long_text": "window", "window_stride": 16, "window_reduce": "max"}
    windowed = post(f"{server.url}/v1/models/regression/embed", {"inputs": long, "parameters": options})
    assert windowed.status_code == 200, windowed.text
    expected = predictors["regression"].embed(long, **options)
    assert_same(windowed.json()["embeddings"], expected.tolist())
    assert not np.allclose(expected[0], predictors["regression"].embed(long[0]))  # the windows made a difference
    bad = post(f"{server.url}/v1/models/regression/embed", {"inputs": long, "parameters": {"long_text": "pages"}})
    assert bad.status_code == 422 and "long_text" in bad.json()["error"]


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b'{"inputs": ["unterminated', 422, "not valid JSON"),
        (b"", 422, "body is empty"),
        ({"inputs": []}, 422, "'inputs' is empty"),
        ({"texts": ["hi"]}, 422, "unknown field(s) 'texts'"),
        ({"inputs": "just a string"}, 422, "must be a list"),
        ({"inputs": ["ok", 7]}, 422, "inputs[1] is a number"),
        ({"inputs": [["only one side"]]}, 422, "inputs[0] is a list"),
        ({"inputs": ["x"] * 17}, 422, "at most 16 per request"),
        ({"inputs": ["x"], "parameters": []}, 422, "'parameters' must be a JSON object"),
        ({"inputs": ["x"], "parameters": {"temperature": 2}}, 422, "temperature"),
        ({"inputs": ["x"] * 15, "parameters": {"aggregation": "bogus"}}, 422, "aggregation"),
    ],
)
def test_bad_requests_are_422_saying_what_was_wrong(server, body, status, message):
    response = post(f"{server.url}/v1/models/token_cls/predict", body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_unknown_model_is_404_listing_the_served_names(server):
    response = post(f"{server.url}/v1/models/sentiment/predict", {"inputs": ["hi"]})
    assert response.status_code == 404
    assert "'sentiment'" in response.json()["error"] and all(name in response.json()["error"] for name in HEADS)
    no_route = httpx.get(f"{server.url}/v2/anything")
    assert no_route.status_code == 404 and "POST /v1/models/{name}/predict" in no_route.json()["error"]
    wrong_method = httpx.get(f"{server.url}/v1/models/seq_cls/predict", headers=AUTH)
    assert wrong_method.status_code == 405 and "does not take GET" in wrong_method.json()["error"]


def test_api_key_is_required_and_checked(server):
    url = f"{server.url}/v1/models/seq_cls/predict"
    missing = httpx.post(url, json={"inputs": ["hi"]})
    wrong = httpx.post(url, json={"inputs": ["hi"]}, headers={"Authorization": "Bearer nope"})
    assert missing.status_code == wrong.status_code == 401
    assert "Authorization: Bearer" in missing.json()["error"] and missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200  # probes need no key


def test_bodies_over_the_payload_limit_are_413(server):
    url = f"{server.url}/v1/models/seq_cls/predict"
    declared = post(url, {"inputs": ["x" * 30000]})
    assert declared.status_code == 413 and "at most 20000" in declared.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced on the bytes as they arrive
        yield b'{"inputs": ["'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"]}'

    streamed = httpx.post(url, content=chunks(), headers=AUTH, timeout=30)
    assert streamed.status_code == 413
    assert post(url, {"inputs": ["still serving"]}).status_code == 200


def test_metrics_parse_and_count_what_happened(server):
    before = _samples(server)
    post(f"{server.url}/v1/models/seq_cls/predict", {"inputs": ["one", "two", "three"]})
    post(f"{server.url}/v1/models/nope/predict", {"inputs": ["x"]})
    after = _samples(server)
    ok = ("headreg_requests_total",
          (("model", "seq_cls"), ("protocol", "native"), ("route", "/v1/models/{name}/predict"), ("status", "200")))
    assert after[ok] == before.get(ok, 0) + 1
    missing = ("headreg_requests_total",
               (("model", ""), ("protocol", "native"), ("route", "/v1/models/{name}/predict"), ("status", "404")))
    assert after[missing] == before.get(missing, 0) + 1
    rows = ("headreg_rows_total", (("model", "seq_cls"),))
    assert after[rows] == before.get(rows, 0) + 3
    assert after[("headreg_queue_rows", (("model", "seq_cls"),))] == 0
    for name in ("headreg_batch_size_count", "headreg_batch_tokens_count", "headreg_inference_duration_seconds_count"):
        assert after[(name, (("model", "seq_cls"),))] >= 1
    assert after[("headreg_request_duration_seconds_count",
                  (("model", "seq_cls"), ("protocol", "native"), ("route", "/v1/models/{name}/predict")))] >= 1


def _samples(server) -> dict:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_access_log_is_one_json_line_per_request(server):
    post(f"{server.url}/v1/models/multi_label/predict", {"inputs": ["logged", "twice"]})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in server.access_lines() if line.get("model") == "multi_label" and line["rows"] == 2]
        if lines:
            break
        time.sleep(0.05)
    assert lines, server.log.read_text()[-2000:]
    line = lines[-1]
    assert line["method"] == "POST" and line["path"] == "/v1/models/multi_label/predict" and line["status"] == 200
    assert line["inputs"] == 2 and line["latency_ms"] > 0


# --- limits, failures and shutdown, each on a small server of its own ---------------------------------------------


@pytest.fixture(scope="module")
def fragile_server(bundles, tmp_path_factory):
    """seq_cls plus a plugin head whose postprocess raises on texts containing 'explode'; 2 requests at a time."""
    tmp = tmp_path_factory.mktemp("fragile")
    site = tmp / "site"
    pip_install(site, write_plugin(tmp / "src", "headreg-plugin-fragile", "fragile_plugin", FRAGILE_PLUGIN))
    fragile = tmp / "fragile"
    shutil.copytree(bundles["seq_cls"], fragile)
    manifest = json.loads((fragile / "headreg.json").read_text())
    manifest["head"].update(name="fragile", postprocess="fragile_plugin:post", plugin="headreg-plugin-fragile")
    (fragile / "headreg.json").write_text(json.dumps(manifest))
    pythonpath = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    srv = Server(tmp, str(bundles["seq_cls"]), str(fragile), "--max-concurrent-requests", "2",
                 env={"PYTHONPATH": pythonpath})
    yield srv
    assert srv.stop() == 0


def test_a_failing_request_is_500_and_the_server_keeps_serving(fragile_server, predictors):
    async def run():
        async with httpx.AsyncClient(base_url=fragile_server.url, timeout=60) as client:
            # Two at once, within the server's limit of 2 concurrent requests: a third could be turned away with
            # 429 in any position, the failing one included.
            bodies = [{"inputs": ["fine", "also fine"]}, {"inputs": ["this will explode"]}]
            return await asyncio.gather(*(client.post("/v1/models/fragile/predict", json=b) for b in bodies))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 500]
    assert "fails on purpose" in responses[1].json()["error"]
    assert_same(responses[0].json()["outputs"],
                json.loads(json.dumps(predictors["seq_cls"].predict(["fine", "also fine"]))))
    after = httpx.post(f"{fragile_server.url}/v1/models/fragile/predict", json={"inputs": ["fine"]}, timeout=30)
    assert after.status_code == 200
    assert_same(after.json()["outputs"], json.loads(json.dumps(predictors["seq_cls"].predict(["fine"]))))


def test_over_the_concurrency_limit_is_429_with_retry_after(fragile_server):
    from concurrent.futures import ThreadPoolExecutor

    # A request counts once its body is in (tests/test_serve_hostile.py: slow senders take no slot), so the two
    # held requests are ones with seconds of work: 8 texts read in 211 windows each.
    heavy = {"inputs": ["word " * 20_000] * 8, "parameters": {"long_text": "window"}}
    url = f"{fragile_server.url}/v1/models/seq_cls/predict"
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(httpx.post, url, json=heavy, timeout=60) for _ in range(2)]
        _wait_in_flight(fragile_server, 2)
        refused = httpx.post(url, json={"inputs": ["x"]}, timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "--max-concurrent-requests" in refused.json()["error"]
        assert [request.result().status_code for request in held] == [200, 200]
    assert httpx.post(url, json={"inputs": ["x"]}, timeout=30).status_code == 200


def test_sigterm_answers_requests_in_flight_then_exits_0(bundles, predictors, tmp_path):
    srv = Server(tmp_path, str(bundles["token_cls"]))
    texts = [[TEXTS[i]] for i in range(6)]
    held = [_SlowRequest(srv, "token_cls", inputs) for inputs in texts]
    try:
        _wait_in_flight(srv, len(held), "headreg_requests_receiving")
        srv.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # new connections are refused once shutdown begins
            try:
                httpx.get(f"{srv.url}/health", timeout=2)
            except httpx.TransportError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the server still accepts connections after SIGTERM")
        answers = [request.finish() for request in held]
        code = srv.process.wait(timeout=30)
    finally:
        srv.stop()
    for inputs, (status, body) in zip(texts, answers):
        assert status == 200, body
        assert_same(json.loads(body)["outputs"], json.loads(json.dumps(predictors["token_cls"].predict(inputs))))
    assert code == 0, srv.log.read_text()[-2000:]


class _SlowRequest:
    """A POST whose body is sent in two parts: the request is received (no slot yet) and held open until ``finish``."""

    def __init__(self, server: Server, model: str, inputs: list):
        body = json.dumps({"inputs": inputs}).encode()
        self.rest = body[len(body) // 2:]
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.sock.sendall(
            f"POST /v1/models/{model}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2]
        )

    def finish(self) -> tuple[int, str]:
        self.sock.sendall(self.rest)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def _wait_in_flight(server: Server, count: int, gauge: str = "headreg_requests_in_flight") -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _samples(server).get((gauge, ())) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server never had {count} requests in flight ({gauge})")


# --- the command line ------------------------------------------------------------------------------------------------


def test_bundle_arguments_are_checked_before_serving(bundles):
    from conftest import run_headreg

    same = run_headreg("serve", f"a={bundles['seq_cls']}", f"a={bundles['regression']}", "--port", "1")
    assert same.returncode == 2 and "two bundles are named 'a'" in same.stderr
    missing = run_headreg("serve", "x=/nonexistent/bundle", "--port", "1")
    assert missing.returncode == 2 and "no bundle directory" in missing.stderr


def test_a_port_in_use_is_a_usage_error_before_any_bundle_loads(bundles):
    """Another process listens on the port: exit 2 with what to do, in the one error style, and that process
    keeps its port (the check binds, it does not take over)."""
    from conftest import run_headreg

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_headreg("serve", str(bundles["seq_cls"]), "--port", str(port), timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
        assert "pass another --port" in result.stderr and "serving" not in result.stderr
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # still the first listener's


def test_port_0_serves_on_a_free_port_and_names_it(bundles, tmp_path):
    server = Server(tmp_path, str(bundles["seq_cls"]), port=0)  # healthy on the port its stderr names
    try:
        assert server.port != 0
        assert httpx.get(f"{server.url}/health", timeout=5).json() == {"status": "ok"}
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_model_workers_serve_concurrent_clients_with_the_predictors_answers(bundles, predictors, tmp_path):
    srv = Server(tmp_path, f"seq_cls={bundles['seq_cls']}", "--model-workers", "2")
    try:
        texts = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(24)]

        async def send() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/v1/models/seq_cls/predict", json={"inputs": [text]})
                                              for text in texts))

        answers = asyncio.run(send())
        assert [answer.status_code for answer in answers] == [200] * len(texts)
        for text, answer in zip(texts, answers):
            assert_same(answer.json()["outputs"], json.loads(json.dumps(predictors["seq_cls"].predict([text]))))
        assert "2 batches at once, 1 thread(s) each" in srv.log.read_text()
    finally:
        assert srv.stop() == 0


# --- the batcher in this process: cross-request batches, made deterministic by queueing before the model starts ----


def test_rows_of_concurrent_requests_share_batches_and_each_gets_its_own(predictors):
    from headreg.serve.batcher import Batcher

    predictor = predictors["regression"]
    requests = [[TEXTS[i % len(TEXTS)], f"request {i}"] if i % 3 else [f"only request {i}"] for i in range(24)]

    async def run():
        batcher = Batcher("regression", predictor, max_batch_tokens=4096, max_batch_size=16)
        tasks = [asyncio.create_task(batcher.submit(inputs)) for inputs in requests]
        rows = sum(len(inputs) for inputs in requests)
        for _ in range(2000):  # every request tokenized and queued before the model thread starts
            if batcher._rows == rows:
                break
            await asyncio.sleep(0.005)
        assert batcher._rows == rows
        batcher.start()
        results = await asyncio.gather(*tasks)
        await batcher.close()
        return batcher, results

    batcher, results = asyncio.run(run())
    assert batcher.rows == sum(len(inputs) for inputs in requests)
    assert batcher.batches < len(requests) and batcher.mean_batch_size > 2  # rows of many requests per batch
    for inputs, result in zip(requests, results):
        assert_same(json.loads(json.dumps(result)), json.loads(json.dumps(predictor.predict(inputs))))


def test_batches_of_long_rows_are_held_to_the_attention_cap_and_answers_do_not_change(predictors):
    from headreg.serve.batcher import Batcher, cap_attention

    assert cap_attention([0, 1, 2, 3], [100, 200, 256, 256], cells=2 * 256 * 256) == [[0, 1], [2, 3]]
    assert cap_attention([0, 1], [40, 600], cells=2 * 256 * 256) == [[0], [1]]  # a row past the cap runs alone
    assert cap_attention([0, 1, 2], [10, 11, 12], cells=2 * 256 * 256) == [[0, 1, 2]]  # short rows: untouched
    predictor = predictors["regression"]
    inputs = ["word " * 900, "short one"]
    shapes: list[tuple[int, int]] = []

    async def run():
        batcher = Batcher("regression", predictor, max_batch_tokens=4096, max_batch_size=32,
                          max_batch_cells=2 * 128 * 128)
        record = batcher._record
        batcher._record = lambda rows, seconds: (shapes.append((len(rows), max(len(r.encoding) for r in rows))),
                                                 record(rows, seconds))
        batcher.start()
        result = await batcher.submit(inputs, parameters={"long_text": "window"})
        await batcher.close()
        return result

    result = asyncio.run(run())
    assert sum(rows for rows, _ in shapes) > 4 and max(length for _, length in shapes) == 128
    assert all(rows * length * length <= 2 * 128 * 128 for rows, length in shapes)
    assert_same(json.loads(json.dumps(result)), json.loads(json.dumps(predictor.predict(inputs, long_text="window"))))


def test_several_model_workers_run_batches_at_once_and_answer_like_the_predictor(predictors):
    import threading

    from headreg.serve.batcher import ATTENTION_CELLS, Batcher

    predictor = predictors["regression"]
    requests = [[TEXTS[i % len(TEXTS)], f"request {i}"] for i in range(24)]
    ran_on: list[str] = []

    async def run():
        batcher = Batcher("regression", predictor, max_batch_tokens=4096, max_batch_size=2, workers=2)
        record = batcher._record
        batcher._record = lambda rows, seconds: (ran_on.append(threading.current_thread().name), record(rows, seconds))
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(inputs) for inputs in requests))
        await batcher.close()
        return batcher, results

    batcher, results = asyncio.run(run())
    assert batcher.max_batch_cells == ATTENTION_CELLS // 2  # the workers' batches share one attention budget
    assert batcher.rows == 48 and set(ran_on) == {"headreg-model-regression-0", "headreg-model-regression-1"}
    assert not any(thread.is_alive() for thread in batcher._threads)
    for inputs, result in zip(requests, results):
        assert_same(json.loads(json.dumps(result)), json.loads(json.dumps(predictor.predict(inputs))))


def test_by_default_two_batches_share_an_onnxruntime_sessions_threads(bundles, predictors):
    """Without --model-workers: two workers on one onnxruntime session with more than one thread (a lone batch
    keeps all of them); one on a one-thread session, and one on OpenVINO, whose streams would split the threads."""
    import types

    from headreg.runtime.backends import OpenVINOBackend
    from headreg.serve.batcher import ATTENTION_CELLS, Batcher, auto_workers

    shared = Predictor(bundles["regression"], threads=2)
    assert shared.session.get_session_options().intra_op_num_threads == 2  # not split between the workers
    batcher = Batcher("regression", shared, max_batch_tokens=4096, max_batch_size=8)
    assert batcher.workers == 2 and len(batcher._threads) == 2
    assert batcher.max_batch_cells == ATTENTION_CELLS // 2  # the two batches share one attention budget
    assert Batcher("regression", predictors["regression"], max_batch_tokens=4096, max_batch_size=8).workers == 1
    assert Batcher("regression", shared, max_batch_tokens=4096, max_batch_size=8, workers=3).workers == 3
    requests = [[TEXTS[i % len(TEXTS)], f"request {i}"] for i in range(16)]

    async def run():  # both workers running at once on the one pool, each request answered as alone
        batcher = Batcher("regression", shared, max_batch_tokens=4096, max_batch_size=2)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(inputs) for inputs in requests))
        await batcher.close()
        return results

    for inputs, result in zip(requests, asyncio.run(run())):
        assert_same(json.loads(json.dumps(result)), json.loads(json.dumps(shared.predict(inputs))))
    pytest.importorskip("openvino", reason="the serve extra installs OpenVINO; this checks the OpenVINO rule")
    openvino = OpenVINOBackend(bundles["regression"] / "model.onnx", threads=2, precision="fp32")
    assert auto_workers(types.SimpleNamespace(backend=openvino)) == 1


def test_schema_imports_without_a_web_framework():
    script = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'prometheus_client', 'torch', 'transformers'):\n"
        "    sys.modules[name] = None\n"
        "from headreg.serve.schema import RequestError, parse_request\n"
        "try:\n"
        "    parse_request({'inputs': []}, max_inputs=4)\n"
        "except RequestError as exc:\n"
        "    print(exc.status, exc.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("422 'inputs' is empty")


def test_default_threads_follow_the_container_cpu_quota(tmp_path):
    from headreg.runtime.cpus import available_cpus, cgroup_cpu_quota

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 3.0
    quota = cgroup_cpu_quota()
    expected = len(os.sched_getaffinity(0))
    if quota is not None:
        expected = min(expected, math.ceil(quota))
    assert available_cpus() == expected


def test_a_request_of_many_rows_takes_turns_with_the_requests_queued_behind_it(predictors):
    """A long document read in windows queued first does not make a one-text request behind it wait for all its
    windows: queued requests take turns, one row each per turn. Both answers equal the Predictor's."""
    from headreg.serve.batcher import Batcher

    predictor = predictors["regression"]
    document = " ".join(TEXTS) * 12
    windowed = dict(long_text="window")
    expected_long = predictor.predict([document], **windowed)
    expected_short = predictor.predict(["short text"])

    async def run():
        batcher = Batcher("regression", predictor, max_batch_tokens=4096, max_batch_size=4)
        first = asyncio.create_task(batcher.submit([document], parameters=windowed))
        for _ in range(2000):
            if batcher._rows:
                break
            await asyncio.sleep(0.005)
        windows = batcher._rows
        second = asyncio.create_task(batcher.submit(["short text"]))
        while batcher._rows == windows:
            await asyncio.sleep(0.005)
        batcher.start()
        short = await second
        batches_before_short = batcher.batches
        long = await first
        await batcher.close()
        return windows, batches_before_short, batcher.batches, short, long

    windows, before_short, total, short, long = asyncio.run(run())
    assert windows >= 12 and total >= windows // 4
    assert before_short <= 2 < total  # in arrival order it would have waited for every window's batch
    assert_same(short, expected_short)
    assert_same(long, expected_long)


def test_queued_rows_of_very_different_lengths_are_split_where_padding_costs_more_than_a_call():
    from headreg.serve.batcher import split_padding

    assert split_padding([0, 1, 2, 3], [10, 12, 11, 120], call_cost=60) == [[0, 2, 1], [3]]
    assert split_padding([0, 1, 2, 3], [30, 31, 32, 33], call_cost=60) == [[0, 1, 2, 3]]  # alike: one call
    lengths = [5, 128, 7, 64, 6, 70, 127]
    parts = split_padding(list(range(7)), lengths, call_cost=60)
    assert sorted(i for part in parts for i in part) == list(range(7))  # every row exactly once

    def cost(batches):
        return sum(60 + len(b) * max(lengths[i] for i in b) for b in batches)

    assert cost(parts) <= cost([list(range(7))]) and cost(parts) <= cost([[i] for i in range(7)])
