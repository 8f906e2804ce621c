"""Ray Data (BundlePredictor) and Ray Serve (deployment) on a real local Ray cluster (ray.init(num_cpus=2)).

Results must equal Predictor.predict / embed on the same texts; each actor's onnxruntime session must have the
thread count asked for (default: the actor's num_cpus); Serve answers concurrent real HTTP requests on
127.0.0.1 with the JSON of `headreg serve`.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import sys

import numpy as np
import pytest

from headreg.runtime import InputError, Predictor
from headreg.testing import SAMPLE_TEXTS
from test_runtime_predictor import tiny_bundle  # the session's tiny-BERT bundles, exported once

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'headreg[ray]'")

from headreg.integrations.ray import BundlePredictor, deployment  # noqa: E402

pytestmark = pytest.mark.slow  # starts a local Ray cluster

TEXTS = [f"{SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]} {'and more words ' * (i % 7)}row {i}" for i in range(240)]


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    # Classes defined in this test module are shipped by value: Ray workers cannot import a test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = 300  # every actor up before the first batch, so each pool's actors all get work
    yield ray
    ray.shutdown()


def _session_threads(predictor: Predictor) -> int:
    return predictor.session.get_session_options().intra_op_num_threads


def test_ray_data_two_actors_match_predictor(ray_cluster):
    bundle = tiny_bundle("seq_cls")

    class Probe(BundlePredictor):  # defined here, so Ray ships it by value; reports which actor ran each row
        def __call__(self, batch):
            out = super().__call__(batch)
            out["actor"] = os.getpid()
            out["threads"] = _session_threads(self.predictor)
            return out

    rows = [{"id": i, "text": text, "source": f"doc-{i % 3}"} for i, text in enumerate(TEXTS)]
    ds = ray.data.from_items(rows).map_batches(
        Probe, fn_constructor_kwargs={"bundle": str(bundle)}, compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1, batch_size=32, batch_format="pandas",
    )
    out = ds.take_all()
    expected = Predictor(bundle).predict(TEXTS)
    assert [r["id"] for r in out] == list(range(len(TEXTS)))  # order kept
    assert [(r["text"], r["source"]) for r in out] == [(r["text"], r["source"]) for r in rows]  # columns kept
    assert [{"label": r["label"], "score": r["score"], "scores": r["scores"]} for r in out] == expected
    assert len({r["actor"] for r in out}) == 2  # both actors worked
    assert {r["threads"] for r in out} == {1}  # num_cpus=1 -> one onnxruntime thread, not the host's cores


def test_ray_data_numpy_pairs_threads_from_num_cpus(ray_cluster):
    bundle = tiny_bundle("token_cls")
    pairs = [(text, TEXTS[-1 - i]) for i, text in enumerate(TEXTS[:96])]

    class Probe(BundlePredictor):
        def __call__(self, batch):
            out = super().__call__(batch)
            out["threads"] = np.full(len(out["first"]), _session_threads(self.predictor))
            return out

    ds = ray.data.from_items([{"first": a, "second": b} for a, b in pairs]).map_batches(
        Probe, fn_constructor_kwargs={"bundle": str(bundle), "text_column": "first", "pair_column": "second",
                                      "aggregation": "max"},
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=2, batch_size=40, batch_format="numpy",
    )
    out = ds.take_all()
    expected = Predictor(bundle).predict(pairs, aggregation="max")
    assert [(r["first"], r["second"]) for r in out] == pairs
    assert [list(r["entities"]) for r in out] == [_arrow_entities(e["entities"]) for e in expected]
    assert any(r["entities"] for r in out)
    assert {int(r["threads"]) for r in out} == {2}  # num_cpus=2 -> two threads


def _arrow_entities(entities: list[dict]) -> list[dict]:
    """Entities as they come back from an Arrow list<struct> column: every row has every key."""
    keys = {key for entity in entities for key in entity}
    return [{key: entity.get(key) for key in sorted(keys)} | entity for entity in entities]


def test_bundle_predictor_columns_and_errors():
    """The callable itself (what each actor runs), on pandas batches: embeddings, name clashes, bad input."""
    import pandas as pd

    bundle = tiny_bundle("multi_label")
    batch = pd.DataFrame({"text": TEXTS[:20], "label": ["gold"] * 20})
    long = [text * 12 for text in TEXTS[:20]]  # past max_length: several windows each
    out = BundlePredictor(bundle, output="embed", threads=1, long_text="window")(batch.assign(text=long))
    assert np.array_equal(np.stack(out["embedding"]), Predictor(bundle).embed(long, long_text="window"))
    assert list(out["label"]) == ["gold"] * 20  # the input column is untouched

    predict = BundlePredictor(bundle, threads=1, thresholds=0.3)
    with pytest.raises(ValueError, match="already has column.*label.*prefix"):
        predict(pd.DataFrame({"text": ["a"], "labels": ["gold"]}))
    out = BundlePredictor(bundle, threads=1, prefix="pred_", thresholds=0.3)(batch)
    assert list(out["pred_labels"]) == [r["labels"] for r in Predictor(bundle).predict(TEXTS[:20], thresholds=0.3)]
    with pytest.raises(KeyError, match="no column 'body'.*text_column"):
        BundlePredictor(bundle, threads=1, text_column="body")(batch)
    with pytest.raises(InputError, match="column 'text': row 1 of this batch is null, not a string"):
        predict(pd.DataFrame({"text": ["fine", None]}))
    with pytest.raises(InputError, match="column 'other': row 0 of this batch is null"):  # the pair's own column
        BundlePredictor(bundle, threads=1, pair_column="other")(pd.DataFrame({"text": ["a"], "other": [None]}))
    with pytest.raises(ValueError, match="output="):
        BundlePredictor(bundle, output="labels")
    with pytest.raises(InputError, match="long_text"):  # options are the Predictor's, checked at load
        BundlePredictor(bundle, output="embed", long_text="paragraphs")
    with pytest.raises(InputError, match="bogus"):
        BundlePredictor(bundle, bogus=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_deployment_over_http(ray_cluster):
    httpx = pytest.importorskip("httpx")
    from ray import serve

    bundle = tiny_bundle("seq_cls")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        config = {"max_batch_size": 8, "max_input_texts": 12, "api_key": "s3cret"}
        serve.run(deployment(bundle, name="sentiment", serve_config=config), name="headreg", route_prefix="/")
        base = f"http://127.0.0.1:{port}/v1/models"
        predictor = Predictor(bundle)
        auth = {"Authorization": "Bearer s3cret"}
        # headreg serve's own app: its API key, limits, errors and metrics names
        refused = httpx.post(f"{base}/sentiment/predict", json={"inputs": ["a"]}, timeout=60)
        assert refused.status_code == 401 and "error" in refused.json()
        too_many = httpx.post(f"{base}/sentiment/predict", json={"inputs": ["a"] * 13}, headers=auth, timeout=60)
        assert too_many.status_code == 422 and "12" in too_many.json()["error"]
        httpx = _Authorized(httpx, auth)

        def call(start: int):
            inputs = TEXTS[start : start + 5] + [[TEXTS[start], TEXTS[start + 1]]]
            answer = httpx.post(f"{base}/sentiment/predict", json={"inputs": inputs}, timeout=60)
            return inputs, answer

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(0, 160, 10)))
        for inputs, answer in answers:
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model"] == "sentiment"
            assert body["outputs"] == predictor.predict([tuple(i) if isinstance(i, list) else i for i in inputs])

        embedded = httpx.post(f"{base}/sentiment/embed", json={"inputs": TEXTS[:3]}, timeout=60).json()
        assert embedded["model"] == "sentiment"  # float32 values, written as float32 (orjson) by the server
        assert np.array_equal(np.asarray(embedded["embeddings"], np.float32), predictor.embed(TEXTS[:3]))
        windowed = {"long_text": "window", "window_stride": 16}
        embedded = httpx.post(f"{base}/sentiment/embed", json={"inputs": ["word " * 300], "parameters": windowed},
                              timeout=60).json()
        assert np.array_equal(np.asarray(embedded["embeddings"], np.float32), predictor.embed(["word " * 300], **windowed))

        bad = httpx.post(f"{base}/sentiment/predict", content=b'{"inputs": ["a", 3]}', timeout=60)
        assert bad.status_code == 422 and "inputs[1]" in bad.json()["error"]
        assert httpx.post(f"{base}/sentiment/predict", content=b"{", timeout=60).status_code == 422
        option = httpx.post(f"{base}/sentiment/predict", json={"inputs": ["a"], "parameters": {"bogus": 1}}, timeout=60)
        assert option.status_code == 422 and "bogus" in option.json()["error"]  # the Predictor's own check
        missing = httpx.post(f"{base}/other/predict", json={"inputs": ["a"]}, timeout=60)
        assert missing.status_code == 404 and "sentiment" in missing.json()["error"]
        listed = httpx.get(base, timeout=60).json()["models"]
        assert [(m["name"], m["labels"]) for m in listed] == [("sentiment", predictor.labels)]
        from headreg.serve.schema import model_info

        assert listed == [model_info("sentiment", predictor)]  # the same entry headreg serve lists
        assert listed[0]["task"] == "sequence-classification"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text
        assert "headreg_requests_total" in metrics and 'model="sentiment"' in metrics
        limits = httpx.get(f"http://127.0.0.1:{port}/info", timeout=60).json()["limits"]
        assert limits["trim_memory"] is True  # headreg serve's memory defaults in each replica

        # past max_concurrent_requests the app answers 429 (Ray's router used to queue the excess itself)
        serve.run(deployment(bundle, name="sentiment", serve_config={**config, "max_concurrent_requests": 1}),
                  name="headreg", route_prefix="/")
        slow = {"inputs": ["word " * 2000] * 4, "parameters": {"long_text": "window"}}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: httpx.post(f"{base}/sentiment/embed", json=slow, timeout=120).status_code,
                                     range(6)))
        assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    finally:
        serve.shutdown()


class _Authorized:
    """httpx's module-level calls with the API key header added."""

    def __init__(self, module, headers):
        self.module, self.headers = module, headers

    def post(self, url, **kwargs):
        return self.module.post(url, headers=self.headers, **kwargs)

    def get(self, url, **kwargs):
        return self.module.get(url, headers=self.headers, **kwargs)



def test_bundle_predictor_multi_head_column_per_head(multi_head_bundle):
    import pandas as pd

    bundle = multi_head_bundle
    batch = pd.DataFrame({"text": TEXTS[:12]})
    expected = Predictor(bundle).predict(TEXTS[:12])
    out = BundlePredictor(bundle, threads=1)(batch)
    assert list(out["sentiment"]) == [r["sentiment"] for r in expected]
    assert list(out["entities"]) == [{"entities": r["entities"]["entities"]} for r in expected]
    only = BundlePredictor(bundle, threads=1, heads=["sentiment"])(batch)
    assert "entities" not in only.columns and list(only["sentiment"]) == list(out["sentiment"])


def test_ray_data_arrow_batches_keep_the_declared_types_so_parquet_reads_back(ray_cluster, tmp_path):
    """With batch_format="pyarrow" every block's result columns have the head's declared types: a block whose
    texts hold no entity no longer writes list<null> beside list<struct>, which pyarrow cannot read back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bundle = tiny_bundle("token_cls")
    texts = ["", "", *TEXTS[:6]]  # the first block (batch_size=2) has no entity
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)]).map_batches(
        BundlePredictor, fn_constructor_kwargs={"bundle": str(bundle)}, compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1, batch_size=2, batch_format="pyarrow",
    )
    ds.write_parquet(str(tmp_path / "out"))
    table = pq.read_table(str(tmp_path / "out")).sort_by("id")
    expected = Predictor(bundle).predict(texts)
    assert table.column("text").to_pylist() == texts
    assert table.schema.field("entities").type == pa.list_(pa.struct([
        ("label", pa.string()), ("score", pa.float64()), ("start", pa.int32()), ("end", pa.int32()),
        ("word", pa.string()), ("sequence", pa.int32())]))
    assert [[{k: v for k, v in e.items() if v is not None} for e in row] for row in table.column("entities").to_pylist()] \
        == [r["entities"] for r in expected]
    assert any(r["entities"] for r in expected) and not expected[0]["entities"]

    seq = BundlePredictor(tiny_bundle("seq_cls"), threads=1)(pa.table({"text": TEXTS[:3]}))
    assert seq.schema.field("scores").type == pa.map_(pa.string(), pa.float64())
    assert [dict(s) for s in seq.column("scores").to_pylist()] == [r["scores"] for r in Predictor(tiny_bundle("seq_cls")).predict(TEXTS[:3])]
    vectors = BundlePredictor(tiny_bundle("seq_cls"), output="embed", threads=1)(pa.table({"text": TEXTS[:3]}))
    assert np.array_equal(np.asarray(vectors.column("embedding").to_pylist(), np.float32),
                          Predictor(tiny_bundle("seq_cls")).embed(TEXTS[:3]))
