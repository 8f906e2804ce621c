"""predict_udf on a real Spark local[2] session: results equal Predictor.predict / embed, nulls stay null,
sentence pairs, the bundle shipped with addFile, and one Predictor per Python worker process (counted).
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest

from headreg.errors import HeadregError
from headreg.runtime import InputError, Predictor
from headreg.testing import SAMPLE_TEXTS
from test_runtime_predictor import tiny_bundle  # the session's tiny-BERT bundles, exported once

pytest.importorskip("pyspark", reason="PySpark is not installed: pip install 'headreg[spark]'")
pytest.importorskip("pandas", reason="pandas is not installed: pip install 'headreg[spark]'")

from headreg.integrations.spark import predict_udf  # noqa: E402

pytestmark = pytest.mark.slow  # starts a local Spark session

TEXTS = [f"{SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]} {'and more words ' * (i % 7)}row {i}" for i in range(200)]
BATCH_ROWS = 16  # rows per Arrow batch: many batches per task, so a per-batch load would show


def _java_home() -> str | None:
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return os.environ.get("JAVA_HOME")
    found = sorted(glob.glob("/usr/lib/jvm/java-17*")) + sorted(glob.glob("/usr/lib/jvm/*"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    java = _java_home()
    if java:
        os.environ.setdefault("JAVA_HOME", java)
    elif not shutil.which("java"):
        pytest.skip("Spark needs Java (17): none found on PATH or under /usr/lib/jvm")
    try:
        session = (
            SparkSession.builder.master("local[2]").appName("headreg-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.python.worker.reuse", "true")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
            .config("spark.driver.memory", "1g")
            .getOrCreate()
        )
    except Exception as exc:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(f"Spark local[2] cannot start here: {type(exc).__name__}: {exc}")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _sorted(rows, key="id"):
    return sorted(rows, key=lambda row: row[key])


def test_struct_matches_predictor_and_loads_once_per_worker(spark):
    from pyspark.sql import functions as F

    bundle = tiny_bundle("seq_cls")
    data = [(i, text) for i, text in enumerate(TEXTS)] + [(len(TEXTS), None)]
    df = spark.createDataFrame(data, "id long, text string").repartition(4)
    udf = predict_udf(bundle, output="struct", ship=True)  # shipped with addFile, as on a cluster
    rows = _sorted(df.withColumn("pred", udf(F.col("text"))).collect())

    expected = Predictor(bundle).predict(TEXTS)
    assert [row["pred"].asDict(recursive=True) for row in rows[:-1]] == expected
    # a null text: every field null (a pandas UDF cannot return a null struct; docs/scale-out.md says so)
    assert rows[-1]["pred"].asDict() == {"label": None, "score": None, "scores": None}
    assert udf.return_type == "struct<label:string,score:double,scores:map<string,double>>"

    loads = udf.loads
    workers = [load["worker"] for load in loads]
    batches = -(-len(data) // BATCH_ROWS)
    assert 1 <= len(workers) <= 2 < batches  # local[2]: at most two Python workers, many more batches
    assert len(set(workers)) == len(workers)  # each worker process built its Predictor once
    assert all(load["threads"] == 1 for load in loads)
    # The executors read the shipped copy (SparkFiles), not the driver's directory.
    assert all(load["bundle"] != str(bundle) and os.path.basename(load["bundle"]) == bundle.name for load in loads)

    # A second job with the same UDF reuses the workers' Predictors: no new loads.
    again = df.withColumn("pred", udf(F.col("text"))).select(F.col("pred.label")).collect()
    assert sorted(r["label"] or "" for r in again) == sorted([r["label"] for r in expected] + [""])
    assert len(udf.loads) == len(loads)


def test_label_embedding_and_pairs(spark):
    import numpy as np
    from pyspark.sql import functions as F

    seq_bundle, token_bundle = tiny_bundle("seq_cls"), tiny_bundle("token_cls")
    pairs = [(TEXTS[i], TEXTS[-1 - i]) for i in range(60)]
    df = spark.createDataFrame([(i, a, b) for i, (a, b) in enumerate(pairs)], "id long, a string, b string")
    label, embed = predict_udf(seq_bundle), predict_udf(seq_bundle, output="embedding")
    entities = predict_udf(token_bundle, aggregation="max")
    rows = _sorted(df.select(
        "id",
        label(F.col("a"), F.col("b")).alias("pair_label"),
        embed(F.col("a")).alias("embedding"),
        entities(F.col("a")).alias("entities"),
    ).collect())

    seq = Predictor(seq_bundle)
    assert label.return_type == "string" and embed.return_type == "array<float>"
    assert [row["pair_label"] for row in rows] == [r["label"] for r in seq.predict(pairs)]
    assert np.array_equal(np.array([row["embedding"] for row in rows], dtype=np.float32),
                          seq.embed([a for a, _ in pairs]))
    expected = Predictor(token_bundle).predict([a for a, _ in pairs], aggregation="max")
    got = [[{k: v for k, v in e.asDict().items() if v is not None} for e in row["entities"]] for row in rows]
    assert got == [r["entities"] for r in expected]
    assert any(got)


def test_errors_on_the_driver(spark):
    bundle = tiny_bundle("seq_cls")
    with pytest.raises(ValueError, match="output="):
        predict_udf(bundle, output="labels")
    with pytest.raises(InputError, match="long_text"):  # the Predictor checks the options once, on the driver
        predict_udf(bundle, output="embedding", long_text="paragraphs")
    with pytest.raises(InputError, match="bogus"):
        predict_udf(bundle, output="struct", bogus=1)
    with pytest.raises(HeadregError):
        predict_udf(bundle.parent / "no-such-bundle")


def test_multi_head_struct_has_a_field_per_head(spark, multi_head_bundle):
    from pyspark.sql import functions as F

    texts = TEXTS[:40]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)] + [(len(texts), None)], "id long, text string")
    full, labels = predict_udf(multi_head_bundle, output="struct"), predict_udf(multi_head_bundle)
    rows = _sorted(df.select("id", full(F.col("text")).alias("pred"), labels(F.col("text")).alias("label")).collect())

    assert full.return_type.startswith("struct<`sentiment`:struct<label:string,score:double")
    expected = Predictor(multi_head_bundle).predict(texts)
    got = [row["pred"].asDict(recursive=True) for row in rows[:-1]]
    assert [g["sentiment"] for g in got] == [e["sentiment"] for e in expected]
    assert [[{k: v for k, v in ent.items() if v is not None} for ent in g["entities"]["entities"]] for g in got] == \
        [e["entities"]["entities"] for e in expected]
    assert [row["label"]["sentiment"] for row in rows[:-1]] == [e["sentiment"]["label"] for e in expected]
    assert rows[-1]["pred"] is None or rows[-1]["pred"]["sentiment"] is None  # a null text: null results
