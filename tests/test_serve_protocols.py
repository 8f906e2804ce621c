"""The protocols clients already speak, called with the real client libraries against a real ``headreg serve``.

openai's SDK (float and base64 vectors), ``huggingface_hub.InferenceClient`` (four tasks), ``tritonclient.http``
(Open Inference Protocol v2, binary tensors as it sends them by default) and LlamaIndex's TEI integration; every
answer equals ``Predictor``'s (1e-5 for vectors, identical labels and entity spans).
"""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
from test_runtime_predictor import tiny_bundle
from test_serve import API_KEY, AUTH, TEXTS, Server, _samples, post

from headreg.runtime import Predictor

pytestmark = pytest.mark.slow  # real `headreg serve` processes answering each protocol

HEADS = ("seq_cls", "multi_label", "regression", "token_cls")
SHORT = [text for text in TEXTS if text.strip()][:6]  # the HF and OpenAI clients refuse empty strings themselves
PAIRS = [("A man plays the guitar.", "Someone plays music."), ("The cat sleeps.", "A stock market crash.")]


@pytest.fixture(autouse=True)
def hub_client_reaches_the_local_server(monkeypatch):
    """CI runs with HF_HUB_OFFLINE=1 (no model hub at run time), which makes huggingface_hub refuse every request,
    the local server's too; these clients talk to 127.0.0.1 only."""
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def bundles():
    return {head: tiny_bundle(head) for head in HEADS}


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("protocols"), *(f"{head}={bundles[head]}" for head in HEADS),
                 "--max-input-texts", "16", env={"HEADREG_API_KEY": API_KEY})
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def predictors(bundles):
    return {head: Predictor(path, threads=1) for head, path in bundles.items()}


def close(got, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), np.asarray(expected, dtype=np.float32), atol=atol, rtol=0)


def unit(vectors):
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


# --- OpenAI ------------------------------------------------------------------------------------------------------


def test_openai_sdk_embeddings_equal_predictor_in_both_encodings(server, predictors):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    expected = predictors["seq_cls"].embed(SHORT)
    default = client.embeddings.create(model="seq_cls", input=SHORT)  # the SDK asks for base64 by default
    floats = client.embeddings.create(model="seq_cls", input=SHORT, encoding_format="float")
    for answer in (default, floats):
        assert [item.index for item in answer.data] == list(range(len(SHORT))) and answer.model == "seq_cls"
        close([item.embedding for item in answer.data], expected)
    tokens = sum(len(e) for e in predictors["seq_cls"].tokenizer.encode_batch(SHORT))
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens
    one = client.embeddings.create(model="seq_cls", input=SHORT[0], encoding_format="float")
    close(one.data[0].embedding, expected[0])
    assert [model.id for model in client.models.list()] == list(HEADS)


def test_openai_errors_are_openai_shaped_400s(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as token_ids:
        client.embeddings.create(model="seq_cls", input=[[101, 2023, 102]])
    assert "token ids" in token_ids.value.message and token_ids.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError, match="cannot shorten"):
        client.embeddings.create(model="seq_cls", input="x", dimensions=8)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="nope", input="x")
    assert missing.value.body["code"] == "model_not_found" and "seq_cls" in missing.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).embeddings.create(model="seq_cls", input="x")
    too_many = post(f"{server.url}/v1/embeddings", {"model": "seq_cls", "input": ["x"] * 17})
    assert too_many.status_code == 400 and "--max-input-texts" in too_many.json()["error"]["message"]
    assert set(too_many.json()["error"]) == {"message", "type", "param", "code"}


# --- Hugging Face Inference ------------------------------------------------------------------------------------------


def test_huggingface_client_text_classification(server, predictors):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{server.url}/models/seq_cls", api_key=API_KEY)
    for text in SHORT:
        expected = predictors["seq_cls"].predict(text)
        answer = client.text_classification(text)
        assert [e.label for e in answer] == sorted(expected["scores"], key=lambda k: -expected["scores"][k])
        assert answer[0].label == expected["label"] and math.isclose(answer[0].score, expected["score"], abs_tol=1e-5)
    top = client.text_classification(SHORT[0], top_k=1)
    assert len(top) == 1 and top[0].label == predictors["seq_cls"].predict(SHORT[0])["label"]
    # multi-label: the per-label sigmoids; regression: the values, in the same list-of-lists shape
    multi = post(f"{server.url}/models/multi_label", {"inputs": SHORT[0]}).json()[0]
    assert {e["label"]: pytest.approx(e["score"], abs=1e-5) for e in multi} == predictors["multi_label"].predict(SHORT[0])["scores"]
    values = post(f"{server.url}/models/regression", {"inputs": [SHORT[0]]}).json()[0]
    close(sorted(e["score"] for e in values), sorted(predictors["regression"].predict(SHORT[0])["values"]))
    logits = np.asarray(predictors["seq_cls"].predict(SHORT[0], return_logits=True)["logits"])
    labels = predictors["seq_cls"].labels
    for function, expected in (("sigmoid", 1 / (1 + np.exp(-logits))), ("none", logits)):
        answer = {e.label: e.score for e in client.text_classification(SHORT[0], function_to_apply=function)}
        close([answer[label] for label in labels], expected)
    refused = post(f"{server.url}/models/seq_cls", {"inputs": "x", "parameters": {"function_to_apply": "tanh"}})
    assert refused.status_code == 400 and "softmax, sigmoid, none" in refused.json()["error"]


@pytest.mark.parametrize("strategy", [None, "simple", "max"])
def test_huggingface_client_token_classification(server, predictors, strategy):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{server.url}/models/token_cls", api_key=API_KEY)
    for text in SHORT:
        options = {"aggregation": strategy} if strategy else {}
        expected = predictors["token_cls"].predict(text, **options)["entities"]
        answer = client.token_classification(text, aggregation_strategy=strategy)
        assert [(e.entity_group, e.word, e.start, e.end) for e in answer] == \
            [(e["label"], e["word"], e["start"], e["end"]) for e in expected]
        close([e.score for e in answer], [e["score"] for e in expected])


def test_huggingface_client_feature_extraction_and_sentence_similarity(server, predictors):
    from huggingface_hub import InferenceClient

    vectors = InferenceClient(model=f"{server.url}/models/seq_cls/pipeline/feature-extraction", api_key=API_KEY)
    close(vectors.feature_extraction(SHORT[0]), predictors["seq_cls"].embed([SHORT[0]]))
    close(vectors.feature_extraction(SHORT[0], normalize=True), predictors["seq_cls"].embed([SHORT[0]], normalize=True))
    expected = predictors["seq_cls"].embed(SHORT)
    cosines = unit(expected[1:]) @ unit(expected[0])
    for url in (f"{server.url}/models/seq_cls", f"{server.url}/models/seq_cls/pipeline/sentence-similarity"):
        similar = InferenceClient(model=url, api_key=API_KEY).sentence_similarity(SHORT[0], other_sentences=SHORT[1:])
        close(similar, cosines)


# --- Open Inference Protocol v2 (Triton's client) ------------------------------------------------------------------


def _triton_text(name, texts):
    import tritonclient.http as triton

    tensor = triton.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))  # binary tensor data, the client's default
    return tensor


def test_tritonclient_metadata_and_inference(server, predictors):
    import tritonclient.http as triton

    # headers=dict(AUTH) each time: the client adds its own headers to the dict it is given

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("seq_cls", headers=dict(AUTH))
    metadata = client.get_model_metadata("seq_cls", headers=dict(AUTH))
    assert [i["name"] for i in metadata["inputs"]] == ["text", "text_pair"]
    assert [o["name"] for o in metadata["outputs"]][:3] == ["label", "score", "scores"]

    result = client.infer("seq_cls", [_triton_text("text", SHORT)], headers=dict(AUTH))
    expected = predictors["seq_cls"].predict(SHORT)
    assert [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")] == \
        [e["label"] for e in expected]
    close(result.as_numpy("score"), [e["score"] for e in expected])
    close(result.as_numpy("scores"), [[e["scores"][label] for label in predictors["seq_cls"].labels] for e in expected])

    pairs = client.infer("seq_cls", [_triton_text("text", [a for a, _ in PAIRS]), _triton_text("text_pair", [b for _, b in PAIRS])],
                         headers=dict(AUTH), outputs=[triton.InferRequestedOutput("score", binary_data=False)])
    close(pairs.as_numpy("score"), [e["score"] for e in predictors["seq_cls"].predict(PAIRS)])

    vectors = client.infer("seq_cls", [_triton_text("text", SHORT)], headers=dict(AUTH),
                           outputs=[triton.InferRequestedOutput("embedding")])
    close(vectors.as_numpy("embedding"), predictors["seq_cls"].embed(SHORT))

    entities = client.infer("token_cls", [_triton_text("text", SHORT)], headers=dict(AUTH)).as_numpy("entities")
    assert [json.loads(item) for item in entities] == \
        json.loads(json.dumps([e["entities"] for e in predictors["token_cls"].predict(SHORT)]))


def test_v2_errors_and_auth(server):
    body = {"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    wrong = post(f"{server.url}/v2/models/seq_cls/infer", body)
    assert wrong.status_code == 400 and list(wrong.json()) == ["error"] and "'text'" in wrong.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/seq_cls").status_code == 401
    assert httpx.get(f"{server.url}/v2/models/nope", headers=dict(AUTH)).status_code == 404
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}  # probes need no key


# --- TEI -----------------------------------------------------------------------------------------------------------


def test_llamaindex_tei_integration_embeds_like_predictor(server, predictors):
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    embedder = TextEmbeddingsInference(model_name="seq_cls", base_url=f"{server.url}/tei/seq_cls", auth_token=API_KEY)
    close(embedder.get_text_embedding_batch(SHORT), predictors["seq_cls"].embed(SHORT, normalize=True))  # TEI normalizes


def test_tei_url_alone_answers_what_the_body_asks(server, predictors):
    """TEI's ``POST /``: clients given only the URL (Haystack's TEI embedder: ``InferenceClient(url)``)."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{server.url}/tei/seq_cls", api_key=API_KEY)
    close(client.feature_extraction(SHORT[0], normalize=True, truncate=True), predictors["seq_cls"].embed([SHORT[0]], normalize=True))
    predicted = post(f"{server.url}/tei/seq_cls", {"inputs": SHORT[0]}).json()  # a classifier predicts
    assert predicted[0]["label"] == predictors["seq_cls"].predict(SHORT[0])["label"]
    ranks = post(f"{server.url}/tei/regression", {"query": "q", "texts": ["a", "b"]}).json()
    assert sorted(r["index"] for r in ranks) == [0, 1]


def test_tei_predict_rerank_tokenize_and_info(server, predictors):
    url = f"{server.url}/tei"
    single = post(f"{url}/seq_cls/predict", {"inputs": SHORT[0]}).json()
    expected = predictors["seq_cls"].predict(SHORT[0])
    assert single[0]["label"] == expected["label"] and math.isclose(single[0]["score"], expected["score"], abs_tol=1e-5)
    batch = post(f"{url}/seq_cls/predict", {"inputs": [[SHORT[0]], list(PAIRS[0])]}).json()
    assert [b[0]["label"] for b in batch] == [e["label"] for e in predictors["seq_cls"].predict([SHORT[0], PAIRS[0]])]
    raw = post(f"{url}/regression/predict", {"inputs": list(PAIRS[0]), "raw_scores": True}).json()
    close(sorted(r["score"] for r in raw), sorted(predictors["regression"].predict([PAIRS[0]])[0]["values"]))
    raw_logits = post(f"{url}/seq_cls/predict", {"inputs": SHORT[0], "raw_scores": True}).json()
    expected_logits = predictors["seq_cls"].predict(SHORT[0], return_logits=True)["logits"]
    close([{r["label"]: r["score"] for r in raw_logits}[label] for label in predictors["seq_cls"].labels], expected_logits)

    texts = [b for _, b in PAIRS] + ["A guitar and a man.", "Music is played."]
    three_labels = post(f"{url}/seq_cls/rerank", {"query": PAIRS[0][0], "texts": texts})
    assert three_labels.status_code == 424 and three_labels.json()["error_type"] == "backend"  # no one score
    ranks = post(f"{url}/regression/rerank", {"query": PAIRS[0][0], "texts": texts, "return_text": True}).json()
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    assert all(texts[r["index"]] == r["text"] for r in ranks)

    tokens = post(f"{url}/seq_cls/tokenize", {"inputs": ["Hello world"]}).json()[0]
    encoding = predictors["seq_cls"].tokenizer.encode("Hello world")
    assert [t["id"] for t in tokens] == encoding.ids and tokens[1]["text"] == "Hello" and tokens[0]["special"]
    info = httpx.get(f"{url}/token_cls/info", headers=dict(AUTH)).json()
    assert info["model_type"]["classifier"]["id2label"]["1"] == "B-PER" and info["max_client_batch_size"] == 16
    too_many = post(f"{url}/seq_cls/embed", {"inputs": ["x"] * 17})
    assert too_many.status_code == 413 and too_many.json()["error_type"] == "validation"
    assert post(f"{server.url}/embed", {"inputs": "x"}).status_code == 404  # four models, no --default-model


def test_tei_truncate_false_refuses_overlong_inputs_in_teis_shape(server, predictors, bundles):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError
    from tokenizers import Tokenizer

    limit = predictors["seq_cls"].max_length
    long = "word " * (2 * limit)
    counter = Tokenizer.from_file(str(bundles["seq_cls"] / "tokenizer.json"))
    counter.no_truncation()
    given = len(counter.encode(long).ids)
    client = InferenceClient(model=f"{server.url}/tei/seq_cls", api_key=API_KEY)
    with pytest.raises(HfHubHTTPError) as refused:
        client.feature_extraction(long, normalize=True, truncate=False)
    assert refused.value.response.status_code == 413
    assert refused.value.response.json() == {
        "error": f"Input validation error: `inputs` must have less than {limit} tokens. Given: {given}",
        "error_type": "validation"}
    # truncate left out (or true) cuts the input at max_length, as before
    close(client.feature_extraction(long, normalize=True), predictors["seq_cls"].embed([long], normalize=True))
    url = f"{server.url}/tei"
    fits = post(f"{url}/seq_cls/embed", {"inputs": SHORT, "truncate": False})
    assert fits.status_code == 200
    close(fits.json(), predictors["seq_cls"].embed(SHORT, normalize=True))
    # a pair is counted whole, in predict and in rerank's (query, text) pairs
    half = "word " * (limit // 2 + 2)
    assert post(f"{url}/seq_cls/predict", {"inputs": [half, half], "truncate": False}).status_code == 413
    assert post(f"{url}/seq_cls/predict", {"inputs": [half, half]}).status_code == 200
    reranked = post(f"{url}/regression/rerank", {"query": half, "texts": ["a", half], "truncate": False})
    assert reranked.status_code == 413 and reranked.json()["error_type"] == "validation"


def test_tei_decode_embed_all_and_embed_sparse(server, predictors):
    url = f"{server.url}/tei/seq_cls"
    tokenizer = predictors["seq_cls"].tokenizer
    ids = tokenizer.encode("Hello world, again").ids
    assert post(f"{url}/decode", {"ids": ids}).json() == [tokenizer.decode(ids)]
    both = post(f"{url}/decode", {"ids": [ids, ids[1:3]], "skip_special_tokens": False}).json()
    assert both == [tokenizer.decode(ids, skip_special_tokens=False), tokenizer.decode(ids[1:3], skip_special_tokens=False)]
    assert "[CLS]" in both[0] and "[CLS]" not in post(f"{url}/decode", {"ids": [ids]}).json()[0]
    for bad in ({"ids": [10**9]}, {"ids": [-1]}, {"ids": ["a"]}, {"ids": []}, {"ids": [1.5]}):
        answer = post(f"{url}/decode", bad)
        assert answer.status_code == 422 and answer.json()["error_type"] == "validation", (bad, answer.text)
    assert post(f"{url}/decode", {"ids": [ids] * 17}).status_code == 413  # --max-input-texts 16
    everything = post(f"{url}/embed_all", {"inputs": ["a fine day"]})
    assert everything.status_code == 424 and everything.json()["error_type"] == "backend"
    assert "per-token embeddings" in everything.json()["error"] and "/embed" in everything.json()["error"]
    assert post(f"{url}/embed_all", {"inputs": 3}).status_code == 422  # the body is checked first
    sparse = post(f"{url}/embed_sparse", {"inputs": ["a fine day"]})
    assert sparse.status_code == 424 and sparse.json()["error_type"] == "backend"
    assert "sparse" in sparse.json()["error"] and "/embed" in sparse.json()["error"]
    assert post(f"{url}/embed_sparse", {"inputs": 3}).status_code == 422


@pytest.mark.slow  # a server of its own
def test_tei_root_routes_answer_for_the_default_model(bundles, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("tei-root"), f"sentiment={bundles['seq_cls']}", f"ner={bundles['token_cls']}",
                 "--default-model", "ner")
    try:
        predictor = Predictor(bundles["token_cls"], threads=1)
        vectors = httpx.post(f"{srv.url}/embed", json={"inputs": SHORT, "normalize": False}).json()
        close(vectors, predictor.embed(SHORT))
        entities = httpx.post(f"{srv.url}/predict", json={"inputs": SHORT[2]}).json()
        assert [(e["label"], e["start"], e["end"]) for e in entities] == \
            [(e["label"], e["start"], e["end"]) for e in predictor.predict(SHORT[2])["entities"]]
        info = httpx.get(f"{srv.url}/info").json()
        assert info["model_id"] == "ner" and [m["name"] for m in info["models"]] == ["sentiment", "ner"]  # TEI's fields beside the native ones
    finally:
        assert srv.stop() == 0


def test_metrics_label_requests_by_protocol(server):
    post(f"{server.url}/tei/seq_cls/embed", {"inputs": "x"})
    samples = _samples(server)
    key = ("headreg_requests_total",
           (("model", "seq_cls"), ("protocol", "tei"), ("route", "/tei/{name}/embed"), ("status", "200")))
    assert samples[key] >= 1


def test_similarity_long_texts_and_json_tensors(server, predictors):
    vectors = predictors["seq_cls"].embed(SHORT[:3])
    similar = post(f"{server.url}/tei/seq_cls/similarity",
                   {"inputs": {"source_sentence": SHORT[0], "sentences": SHORT[1:3]}}).json()
    close(similar, unit(vectors[1:]) @ unit(vectors[0]))

    long_text = " ".join(SHORT * 8)  # past max_length: HF's stride reads it in windows sharing that many tokens
    windowed = post(f"{server.url}/models/token_cls", {"inputs": long_text, "parameters": {"stride": 16}}).json()
    expected = predictors["token_cls"].predict(long_text, long_text="window", window_stride=16)["entities"]
    assert [(e["entity_group"], e["start"], e["end"]) for e in windowed] == [(e["label"], e["start"], e["end"]) for e in expected]
    assert expected[-1]["end"] > len(long_text) // 2

    body = {"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [[SHORT[0]], [SHORT[1]]]}],
            "outputs": [{"name": "label"}]}
    answer = post(f"{server.url}/v2/models/seq_cls/infer", body).json()
    assert answer["id"] == "r1" and answer["outputs"][0]["data"] == [e["label"] for e in predictors["seq_cls"].predict(SHORT[:2])]


def test_each_protocol_refuses_a_missing_key_in_its_own_shape(server):
    tei = httpx.post(f"{server.url}/tei/seq_cls/embed", json={"inputs": "x"})
    hf = httpx.post(f"{server.url}/models/seq_cls", json={"inputs": "x"})
    v2 = httpx.post(f"{server.url}/v2/models/seq_cls/infer", json={"inputs": []})
    assert tei.status_code == hf.status_code == v2.status_code == 401
    assert set(tei.json()) == {"error", "error_type"} and set(hf.json()) == set(v2.json()) == {"error"}
    assert "Authorization: Bearer" in tei.json()["error"] and "seq_cls" not in hf.json()["error"]


def test_vector_responses_refuse_nan_instead_of_writing_null():
    from headreg.serve.responses import FastJSONResponse

    assert FastJSONResponse({"v": np.array([0.5, -2.0], dtype=np.float32)}).body == b'{"v":[0.5,-2.0]}'
    with pytest.raises(ValueError, match="NaN"):
        FastJSONResponse({"data": [{"embedding": np.array([0.5, np.nan], dtype=np.float32)}]})


def test_v2_binary_tensors_that_do_not_fit_are_400(server, predictors):
    import struct

    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 9}}]}).encode()
    url = f"{server.url}/v2/models/seq_cls/infer"
    element = struct.pack("<I", 5) + b"hello"  # Triton's binary BYTES: a little-endian uint32 length, then UTF-8
    ok = httpx.post(url, content=header + element, headers={**AUTH, "Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [predictors["seq_cls"].predict("hello")["label"]]
    overlong = struct.pack("<I", 50) + b"hello"
    for body, length, message in ((header + element, len(header) + 100, "does not fit"),
                                  (header + overlong, len(header), "cut short")):
        bad = httpx.post(url, content=body, headers={**AUTH, "Inference-Header-Content-Length": str(length)})
        assert bad.status_code == 400 and message in bad.json()["error"], bad.text


# --- bodies the protocol routes used to answer 500, or answer misleadingly ---------------------------------------


def test_tei_routes_refuse_a_lone_surrogate_like_the_native_routes(server):
    """``truncate: false`` and /tokenize hand the texts to the tokenizer before the model queue would check them."""
    native = post(f"{server.url}/v1/models/seq_cls/embed", b'{"inputs": ["\\ud800x"]}')
    assert native.status_code == 422 and "not valid Unicode text" in native.json()["error"]
    url = f"{server.url}/tei/seq_cls"
    for path, body in (("/embed", b'{"inputs": "\\ud800x", "truncate": false}'),
                       ("/predict", b'{"inputs": "\\ud800x", "truncate": false}'),
                       ("", b'{"inputs": "\\ud800x", "truncate": false}'),
                       ("/rerank", b'{"query": "\\ud800x", "texts": ["a"], "truncate": false}'),
                       ("/similarity", b'{"inputs": {"source_sentence": "\\ud800x", "sentences": ["a"]}, '
                                       b'"parameters": {"truncate": false}}'),
                       ("/tokenize", b'{"inputs": "\\ud800"}')):
        refused = post(url + path, body)
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["error_type"] == "validation" and "not valid Unicode text" in refused.json()["error"]
        if path != "/rerank":  # a pair names its side
            assert refused.json()["error"] == native.json()["error"]


def test_tei_tokenize_of_a_big_body_leaves_the_event_loop_answering(server):
    import asyncio
    import time

    texts = [" ".join(f"w{i}x{j}" for j in range(15_000))[:120_000] for i in range(16)]  # ~1.9 MB: the payload limit

    async def measure():
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            start = time.perf_counter()
            tokenize = asyncio.create_task(client.post(f"{server.url}/tei/seq_cls/tokenize", json={"inputs": texts}))
            waits = []
            while not tokenize.done():
                sent = time.perf_counter()
                assert (await client.get(f"{server.url}/health")).status_code == 200
                waits.append(time.perf_counter() - sent)
                await asyncio.sleep(0.01)
            return await tokenize, time.perf_counter() - start, waits

    answer, seconds, waits = asyncio.run(measure())
    assert answer.status_code == 200 and len(answer.json()) == 16
    # tokenized on the event loop, one /health waited for (nearly) the whole request
    assert max(waits) < seconds / 2, (max(waits), seconds)
    ids = [[7592, 2088] * 250] * 16
    decoded = post(f"{server.url}/tei/seq_cls/decode", {"ids": ids})  # a decode past INLINE_TOKENS: in a thread too
    assert decoded.status_code == 200 and len(decoded.json()) == 16


def test_tei_tokenize_takes_a_slot_and_the_request_timeout_like_a_model_call(bundles, tmp_path):
    """/tokenize runs no model but costs what tokenizing a request does: it is held to --max-concurrent-requests
    (another request meanwhile gets 429) and to --request-timeout (504), like every model call."""
    import asyncio

    texts = [" ".join(f"w{i}x{j}" for j in range(15_000))[:120_000] for i in range(16)]
    srv = Server(tmp_path, f"seq_cls={bundles['seq_cls']}", "--max-input-texts", "16", "--max-concurrent-requests", "1")
    try:
        async def meanwhile():
            async with httpx.AsyncClient(timeout=60) as client:
                tokenize = asyncio.create_task(client.post(f"{srv.url}/tei/seq_cls/tokenize", json={"inputs": texts}))
                await asyncio.sleep(0.3)  # its body is in and it is tokenizing
                other = await client.post(f"{srv.url}/v1/models/seq_cls/predict", json={"inputs": ["hi"]})
                return await tokenize, other

        tokenize, other = asyncio.run(meanwhile())
        assert tokenize.status_code == 200 and other.status_code == 429, (tokenize.status_code, other.text)
    finally:
        assert srv.stop() == 0
    srv = Server(tmp_path, f"seq_cls={bundles['seq_cls']}", "--max-input-texts", "16", "--request-timeout", "0.1")
    try:
        late = httpx.post(f"{srv.url}/tei/seq_cls/tokenize", json={"inputs": texts}, timeout=60)
        assert late.status_code == 504 and "--request-timeout" in late.json()["error"], late.text
    finally:
        assert srv.stop() == 0


def test_unhashable_and_mistyped_fields_are_400_in_the_protocols_shape(server):
    for function in (["softmax"], {}):
        hf = post(f"{server.url}/models/seq_cls", {"inputs": "x", "parameters": {"function_to_apply": function}})
        assert hf.status_code == 400 and list(hf.json()) == ["error"] and "function_to_apply" in hf.json()["error"]
    url = f"{server.url}/v2/models/seq_cls/infer"
    unhashable = post(url, {"inputs": [{"name": ["x"]}]})
    assert unhashable.status_code == 400 and list(unhashable.json()) == ["error"], unhashable.text
    superscript = post(url, b"{}", headers={"Inference-Header-Content-Length": b"\xb2"})  # "2" to isdigit, not to int
    assert superscript.status_code == 400 and "Inference-Header-Content-Length" in superscript.json()["error"]
    for header in ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": "oops"}]},
                   {"inputs": 5}):
        binary = json.dumps(header).encode()
        answer = post(url, binary + b"\x01\x00\x00\x00x", headers={"Inference-Header-Content-Length": str(len(binary))})
        assert answer.status_code == 400 and list(answer.json()) == ["error"], (header, answer.text)


def test_openai_and_tei_say_what_is_wrong_with_model_input_and_encoding_format(server):
    url = f"{server.url}/v1/embeddings"
    unknown = post(url, {"model": "nope", "input": "x", "dimensions": 384})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    number = post(url, {"model": 5, "input": "x"}).json()["error"]
    assert "must be a string" in number["message"] and "missing" not in number["message"] and number["param"] == "model"
    lists = post(url, {"model": "seq_cls", "input": [["a", "b"]]}).json()["error"]
    assert "token ids" not in lists["message"] and "a string or a list of strings" in lists["message"]
    tei = post(f"{server.url}/tei/seq_cls/embed", {"inputs": [["a"]]})
    assert tei.status_code == 422 and "token ids" not in tei.json()["error"]
    assert "a string or a list of strings" in tei.json()["error"]
    assert "token ids" in post(f"{server.url}/tei/seq_cls/embed", {"inputs": [[101, 102]]}).json()["error"]
    for encoding in ({}, ""):
        wrong = post(url, {"model": "seq_cls", "input": "x", "encoding_format": encoding})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "encoding_format"
        assert "'float' or 'base64'" in wrong.json()["error"]["message"]


def test_huggingface_truncate_false_refuses_overlong_inputs(server, predictors):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    limit = predictors["seq_cls"].max_length
    long = "word " * (2 * limit)
    url = f"{server.url}/models/seq_cls"
    for path, body in (("", {"inputs": long, "truncate": False}),
                       ("/pipeline/feature-extraction", {"inputs": [SHORT[0], long], "parameters": {"truncate": False}}),
                       ("/pipeline/sentence-similarity",
                        {"inputs": {"source_sentence": SHORT[0], "sentences": [long]}, "parameters": {"truncate": False}})):
        refused = post(url + path, body)
        assert refused.status_code == 413, (path, refused.text)
        assert list(refused.json()) == ["error"] and f"must have less than {limit} tokens" in refused.json()["error"]
    client = InferenceClient(model=f"{url}/pipeline/feature-extraction", api_key=API_KEY)
    with pytest.raises(HfHubHTTPError) as refused:
        client.feature_extraction(long, truncate=False)
    assert refused.value.response.status_code == 413
    close(client.feature_extraction(SHORT[0], truncate=False), predictors["seq_cls"].embed([SHORT[0]]))
    close(client.feature_extraction(long), predictors["seq_cls"].embed([long]))  # cut at max_length, as before


def test_v2_refuses_an_unknown_version_a_non_string_id_and_outputs_not_a_list(server):
    text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}
    url = f"{server.url}/v2/models/seq_cls"
    assert post(f"{url}/versions/1/infer", {"inputs": [text]}).status_code == 200  # the version metadata lists
    assert httpx.get(url, headers=dict(AUTH)).json()["versions"] == ["1"]
    unknown = post(f"{url}/versions/999/infer", {"inputs": [text]})
    assert unknown.status_code == 404 and "version" in unknown.json()["error"]
    for path in ("/versions/999", "/versions/999/ready"):
        assert httpx.get(url + path, headers=dict(AUTH)).status_code == 404, path
    for body, message in (({"id": 5, "inputs": [text]}, "'id'"), ({"inputs": [text], "outputs": "label"}, "'outputs'"),
                          ({"inputs": [text], "outputs": 5}, "'outputs'")):
        refused = post(f"{url}/infer", body)
        assert refused.status_code == 400 and message in refused.json()["error"], (body, refused.text)
    surrogate = post(f"{url}/infer", b'{"id": "\\ud800", "inputs": [%s]}' % json.dumps(text).encode())
    assert surrogate.status_code == 400 and "'id'" in surrogate.json()["error"]  # echoed, it could not be written


def test_serve_help_says_which_routes_the_api_key_covers():
    from click.testing import CliRunner

    from headreg.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["serve", "--help"], catch_exceptions=False).output.split())
    assert "/info and /v1 " not in text and "TEI" in text and "except /health, /metrics" in text
