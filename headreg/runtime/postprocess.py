"""Numpy-only postprocessing: turn each row's ONNX outputs into one plain, JSON-serialisable dict per input.

Each head names its postprocess as ``"module:attr"`` in the registry and in the bundle manifest; the
runtime engine calls it as ``postprocess(rows, context) -> list[dict]`` (postprocess contract 2): ``rows[i]``
holds row i's own outputs by name — a per-token output already cut to the row's tokens (no padding to undo),
a per-row output as a vector, an output without a batch axis (a CRF's transitions) as is — aligned with
``context.encodings[i]`` and ``context.texts[i]``. The built-in ones are here; a plugin head writes its own and
may reuse :func:`aggregate_tokens` (a CRF head decodes Viterbi tags in numpy and hands them to it to get words,
entities and character offsets).

>>> import numpy as np
>>> ctx = Context(manifest={}, config={"id2label": {"0": "neg", "1": "pos"}})
>>> seq_cls([{"logits": np.array([0.0, 2.0], dtype=np.float32)}], ctx)[0]["label"]
'pos'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, TypedDict

import numpy as np

from ..aggregation_names import AGGREGATIONS

Rows = Sequence[Mapping[str, np.ndarray]]


# --- result types: plain dicts (JSON as is), typed for readers and type checkers ---------------------------------


class Classification(TypedDict):
    label: str
    score: float
    scores: dict[str, float]  # every label's probability, in label-id order


class MultiLabel(TypedDict):
    labels: list[str]  # labels whose probability reaches their threshold, in label-id order
    scores: dict[str, float]


class Regression(TypedDict):
    values: list[float]


class TokenPrediction(TypedDict, total=False):
    index: int  # position in the encoded sequence (special tokens included), like transformers' "index"
    token: str
    label: str
    score: float
    start: int  # character offsets into the original text (or into text_pair when sequence == 1)
    end: int
    sequence: int  # only for sentence pairs: 0 = text, 1 = text_pair


class Entity(TypedDict, total=False):
    label: str  # B-/I- prefix stripped, like transformers' "entity_group"
    score: float
    start: int
    end: int
    word: str  # text[start:end] of the original input
    sequence: int  # only for sentence pairs


class TokenClassification(TypedDict):
    entities: list[Entity]
    tokens: list[TokenPrediction]


# --- the context a postprocess receives ----------------------------------------------------------------------------


@dataclass
class Context:
    """What a postprocess knows about its rows besides their outputs.

    ``config`` is the manifest's ``postprocess_config`` merged with the caller's overrides;
    ``encodings`` are the rows' ``tokenizers.Encoding`` (truncated, unpadded; a long text read in windows gets
    one encoding of the whole text); ``texts`` the original inputs (a string or a ``(text, text_pair)`` tuple).
    """

    manifest: Mapping[str, Any]
    config: Mapping[str, Any]
    encodings: Sequence[Any] = ()
    texts: Sequence[str | tuple[str, str]] = ()
    _labels: dict[int, str] | None = field(default=None, init=False, repr=False)

    @property
    def id2label(self) -> dict[int, str]:
        """Label names by id (JSON turns the ids into strings; this turns them back)."""
        if self._labels is None:
            raw = self.config.get("id2label") or self.manifest.get("id2label") or {}
            items = enumerate(raw) if isinstance(raw, (list, tuple)) else raw.items()
            self._labels = {int(k): str(v) for k, v in items}
        return self._labels

    def label(self, index: int) -> str:
        return _label_name(self.id2label, index)


def stack(rows: Rows, name: str, dtype: Any = np.float32) -> np.ndarray:
    """One per-row output of every row as a ``[rows, ...]`` array (per-row outputs have the same shape)."""
    return np.stack([np.asarray(row[name], dtype=dtype) for row in rows]) if rows else np.zeros((0, 0), dtype=dtype)


# --- numeric helpers -------------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


# --- built-in heads ----------------------------------------------------------------------------------------------


def seq_cls(rows: Rows, context: Context) -> list[Classification]:
    """Softmax over the labels; the argmax is ``label``."""
    probs = softmax(stack(rows, "logits"))
    results: list[Classification] = []
    for row in probs:
        best = int(row.argmax())
        results.append(
            {
                "label": context.label(best),
                "score": float(row[best]),
                "scores": {context.label(i): float(p) for i, p in enumerate(row)},
            }
        )
    return results


def thresholds_for(context: Context, num_labels: int) -> np.ndarray:
    """Per-label thresholds from the config: a number, a list (one per label) or a {label: threshold} dict; a
    dict changes the labels it names of the bundle's own thresholds (which may be any of the three, too)."""
    value = context.config.get("thresholds", context.config.get("threshold", 0.5))
    base = np.full(num_labels, 0.5)
    if isinstance(value, Mapping):  # only a dict builds on the bundle's own thresholds; a number or list replaces them
        base = _per_label(context.manifest.get("postprocess_config", {}).get("thresholds", 0.5), base, context)
    return _per_label(value, base, context)


def _per_label(value: Any, base: np.ndarray, context: Context) -> np.ndarray:
    if isinstance(value, Mapping):
        thresholds = base.copy()
        names = {name: idx for idx, name in context.id2label.items()}
        for name, threshold in value.items():
            if name not in names:
                raise ValueError(f"threshold for unknown label {name!r}; labels are: {', '.join(names)}")
            thresholds[names[name]] = float(threshold)
        return thresholds
    thresholds = np.asarray(value, dtype=np.float64)
    if thresholds.ndim == 0:
        return np.full(base.shape[0], float(thresholds))
    if thresholds.shape != base.shape:
        raise ValueError(f"thresholds has {thresholds.size} values but the model has {base.shape[0]} labels")
    return thresholds


def multi_label(rows: Rows, context: Context) -> list[MultiLabel]:
    """A sigmoid per label; ``labels`` are those above their threshold (default 0.5)."""
    probs = sigmoid(stack(rows, "logits"))
    if not len(probs):
        return []
    thresholds = thresholds_for(context, probs.shape[-1])
    return [
        {
            # ">" like the exporter's decision check: a probability exactly at the threshold is not "on".
            "labels": [context.label(i) for i in np.flatnonzero(row > thresholds)],
            "scores": {context.label(i): float(p) for i, p in enumerate(row)},
        }
        for row in probs
    ]


def regression(rows: Rows, context: Context) -> list[Regression]:
    """The raw outputs, one float per target."""
    return [{"values": [float(v) for v in np.asarray(row["logits"], dtype=np.float32)]} for row in rows]


def token_cls(rows: Rows, context: Context) -> list[TokenClassification]:
    """Softmax per token, then words and entity spans (``aggregation``: none | first | average | max)."""
    aggregation = context.config.get("aggregation", "first")
    ignore = context.config.get("ignore_labels", ("O",))
    results = []
    for row, encoding, text in zip(rows, context.encodings, context.texts):
        probs = softmax(np.asarray(row["logits"], dtype=np.float32))
        results.append(
            aggregate_tokens(
                probs.argmax(-1), probs, encoding, text, context.id2label, aggregation=aggregation, ignore_labels=ignore
            )
        )
    return results


def raw(rows: Rows, context: Context) -> list[dict[str, Any]]:
    """For heads that register no postprocess: every output of the row as lists of floats."""
    return [{name: np.asarray(value).tolist() for name, value in row.items()} for row in rows]


# --- token aggregation, reusable by plugin heads -----------------------------------------------------------------------


def _split_tag(label: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER"; labels without a B-/I- prefix continue an entity of the same name."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def entity_type(label: str) -> str:
    """The name an entity of this token label gets: "PER" for "B-PER" and "I-PER", the label itself otherwise."""
    return _split_tag(label)[1]


def aggregate_tokens(
    label_ids: Sequence[int] | np.ndarray,
    scores: np.ndarray,
    encoding: Any,
    text: str | tuple[str, str],
    id2label: Mapping[int, str],
    *,
    aggregation: str = "first",
    ignore_labels: Sequence[str] = ("O",),
) -> TokenClassification:
    """Per-token labels -> per-token predictions and entity spans with character offsets into ``text``.

    ``label_ids``: one label id per token of ``encoding`` (argmax, or a CRF's Viterbi path).
    ``scores``: ``[tokens, labels]`` probabilities, or ``[tokens]`` confidences of the given labels.
    ``encoding``: the row's ``tokenizers.Encoding`` (unpadded); its word ids group sub-words into words.
    ``aggregation`` follows transformers' token-classification pipeline:
    ``none`` (alias ``simple``) groups adjacent tokens; ``first`` / ``average`` / ``max`` first give each
    word one label (its first token's / the mean probabilities' / its most confident token's) and then
    group adjacent words. ``B-X`` starts an entity, ``I-X`` (or a bare ``X``) continues one; entities whose
    label is in ``ignore_labels`` are dropped. With 1-D ``scores``, ``average`` takes the word's most
    frequent label and the mean confidence of all its tokens.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    label_ids = np.asarray(label_ids)
    scores = np.asarray(scores)
    if len(label_ids) != len(encoding) or len(scores) != len(encoding):
        raise ValueError(
            f"aggregate_tokens got {len(label_ids)} labels and {len(scores)} scores for {len(encoding)} tokens"
        )
    texts = (text,) if isinstance(text, str) else tuple(text)
    pair = len(texts) > 1
    tokens, words = _token_predictions(label_ids, scores, encoding, id2label, pair)
    if aggregation in ("none", "simple"):
        units = [(t["label"], t["score"], t["start"], t["end"], t.get("sequence", 0)) for t in tokens]
    else:
        units = [_word_unit(positions, sequence, label_ids, scores, encoding, id2label, aggregation)
                 for sequence, positions in words]
    entities = [entity for entity in _group_entities(units, texts, pair) if entity["label"] not in ignore_labels]
    return {"entities": entities, "tokens": tokens}


# One (label, score, start, end, sequence) per unit of grouping: a token (aggregation "none") or a word.
Unit = tuple[str, float, int, int, int]


def _label_name(id2label: Mapping[int, str], idx: int) -> str:
    return id2label.get(int(idx), f"LABEL_{int(idx)}")


def _token_predictions(label_ids: np.ndarray, scores: np.ndarray, encoding: Any,
                       id2label: Mapping[int, str], pair: bool) -> tuple[list[TokenPrediction], list[tuple[int, list[int]]]]:
    """Each real token's prediction, and the words as ``(sequence, token positions)``: sub-words of one word id
    group together, a token without a word id is a word of its own; special tokens are skipped."""
    tokens: list[TokenPrediction] = []
    words: list[tuple[int, list[int]]] = []
    last_key: Any = None
    special = encoding.special_tokens_mask
    for position, (token, (start, end), word_id, sequence) in enumerate(
        zip(encoding.tokens, encoding.offsets, encoding.word_ids, encoding.sequence_ids)
    ):
        if special[position] or sequence is None:
            continue
        label_id = int(label_ids[position])
        score = scores[position, label_id] if scores.ndim == 2 else scores[position]
        prediction: TokenPrediction = {
            "index": position, "token": token, "label": _label_name(id2label, label_id), "score": float(score),
            "start": int(start), "end": int(end),
        }
        if pair:
            prediction["sequence"] = int(sequence)
        tokens.append(prediction)
        key = (sequence, word_id) if word_id is not None else None
        if key is not None and key == last_key:
            words[-1][1].append(position)
        else:
            words.append((sequence, [position]))
        last_key = key
    return tokens, words


def _word_unit(positions: list[int], sequence: int, label_ids: np.ndarray, scores: np.ndarray, encoding: Any,
               id2label: Mapping[int, str], aggregation: str) -> Unit:
    label_id, score = _word_label(positions, label_ids, scores, aggregation)
    start, end = encoding.offsets[positions[0]][0], encoding.offsets[positions[-1]][1]
    return _label_name(id2label, label_id), score, int(start), int(end), int(sequence)


def _group_entities(units: Sequence[Unit], texts: tuple[str, ...], pair: bool) -> list[Entity]:
    """Adjacent units of one entity type make an entity; ``B-X`` starts a new one, and so does a new sequence."""
    entities: list[Entity] = []
    group: list[Unit] = []
    for unit in units:
        if group:
            bi, tag = _split_tag(unit[0])
            if tag == _split_tag(group[-1][0])[1] and bi != "B" and unit[4] == group[-1][4]:
                group.append(unit)
                continue
            entities.append(_entity(group, texts, pair))
        group = [unit]
    if group:
        entities.append(_entity(group, texts, pair))
    return entities


def _word_label(positions: list[int], label_ids: np.ndarray, scores: np.ndarray, aggregation: str) -> tuple[int, float]:
    if aggregation == "average" and scores.ndim == 1:
        labels = [int(label_ids[p]) for p in positions]
        return max(labels, key=labels.count), float(np.mean(scores[positions]))  # most frequent; ties: the earliest
    if aggregation == "average":
        mean = np.nanmean(scores[positions], axis=0)
        label = int(mean.argmax())
        return label, float(mean[label])

    def confidence(p: int) -> float:  # in the token's own label
        return scores[p] if scores.ndim == 1 else scores[p, label_ids[p]]

    best = positions[0] if aggregation == "first" else max(positions, key=confidence)
    return int(label_ids[best]), float(confidence(best))


def _entity(group: list[Unit], texts: tuple[str, ...], pair: bool) -> Entity:
    start, end, sequence = group[0][2], group[-1][3], group[0][4]
    entity: Entity = {
        "label": _split_tag(group[0][0])[1],
        "score": float(np.nanmean([unit[1] for unit in group])),
        "start": start,
        "end": end,
        "word": texts[sequence][start:end],
    }
    if pair:
        entity["sequence"] = sequence
    return entity
