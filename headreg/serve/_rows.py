"""TEMPORARY: the Predictor row pipeline (prepare / run_rows / finish) until it lands in runtime/predictor.py.

Built only from the Predictor's own pieces (encode, pad_batch, session, postprocess); deleted when
``Predictor.run_rows`` exists on main.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime import postprocess as _post
from ..runtime.batching import pad_batch
from ..runtime.inputs import InputError


@dataclass
class Row:
    item: int
    encoding: Any
    window: int = 0


@dataclass
class Job:
    inputs: list
    rows: list
    config: dict
    kind: str
    options: dict = field(default_factory=dict)


class RowPipeline:
    def __init__(self, predictor: Any):
        self._p = predictor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)

    def prepare(self, inputs: list, *, kind: str = "predict", **options: Any) -> Job:
        p = self._p
        known = _known_options(p)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InputError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
        if "threshold" in options:
            options["thresholds"] = options.pop("threshold")
        encodings = p.encode(inputs)
        rows = [Row(item=i, encoding=e) for i, e in enumerate(encodings)]
        return Job(list(inputs), rows, {**p.config, **options}, kind, {})

    def run_rows(self, rows: list) -> list[dict[str, np.ndarray]]:
        p = self._p
        encodings = [row.encoding for row in rows]
        feed = pad_batch(encodings, p.input_names, p.pad_id, p.padding_side, p._input_dtype)
        values = dict(zip(p.output_names, p.session.run(p.output_names, feed)))
        width = feed["attention_mask"].shape[1]
        out = []
        for i, encoding in enumerate(encodings):
            n = max(len(encoding), 1)
            row = {}
            for name, value in values.items():
                if not _batched(p, name):  # e.g. a CRF's transitions: the same for every row
                    row[name] = value
                elif value.ndim >= 3:  # [batch, sequence, ...]: per-token, cut to the row's own tokens
                    row[name] = value[i, width - n:] if p.padding_side == "left" else value[i, :n]
                else:
                    row[name] = value[i]
            out.append(row)
        return out

    def finish(self, job: Job, outputs: list) -> Any:
        p = self._p
        if job.kind == "embed":
            return np.stack([o["pooled_output"] for o in outputs]) if outputs else np.zeros((0, 0), np.float32)
        encodings = [row.encoding for row in job.rows]
        width = max([len(e) for e in encodings] + [1])
        batch: dict[str, np.ndarray] = {}
        for name in outputs[0]:
            parts = [o[name] for o in outputs]
            if not _batched(p, name):
                batch[name] = parts[0]
            elif parts[0].ndim >= 2:
                shape = (len(parts), width, *parts[0].shape[1:])
                padded = np.zeros(shape, dtype=parts[0].dtype)
                for i, part in enumerate(parts):
                    if p.padding_side == "left":
                        padded[i, width - len(part):] = part
                    else:
                        padded[i, : len(part)] = part
                batch[name] = padded
            else:
                batch[name] = np.stack(parts)
        mask = pad_batch(encodings, p.input_names, p.pad_id, p.padding_side, p._input_dtype)["attention_mask"]
        context = _post.Context(manifest=p.manifest, config=job.config, attention_mask=mask, encodings=encodings,
                                texts=job.inputs, padding_side=p.padding_side)
        return p.postprocess(batch, context)


def _batched(p: Any, name: str) -> bool:
    shape = (p.manifest.get("outputs") or {}).get(name)
    return not isinstance(shape, list) or not shape or shape[0] == "batch"


def _known_options(p: Any) -> list[str]:
    known = set(p.config) - {"id2label", "problem_type"}
    if "thresholds" in known:
        known.add("threshold")
    if p.level == "token":
        known |= {"aggregation", "ignore_labels"}
    return sorted(known)


def row_pipeline(predictor: Any) -> Any:
    return predictor if hasattr(predictor, "run_rows") else RowPipeline(predictor)
