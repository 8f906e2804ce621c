"""The inputs export verification runs: random ids in shapes unlike the trace shape, and real text.

Every row has at least one real token: a fully masked attention row is NaN in onnxruntime but zeros in
PyTorch, and the runtime never produces one. Text is tokenized with the bundle's own ``tokenizer.json``
the way the runtime does it (truncation to max_length, padding on the model's side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime.batching import real_span

# Short, long, empty, punctuation-only, non-English and number-heavy texts: they tokenize very differently.
TEXTS = (
    "The service was excellent and the food arrived quickly.",
    "I would not recommend this hotel to anyone.",
    "ok",
    "",
    "Meh. It was fine, I guess, though the second half dragged on far too long for my taste.",
    "Apple announced new MacBook Pro models in Cupertino on Tuesday, starting at $1,999.",
    "¿Dónde está la biblioteca? Ça va très bien, merci! 東京は晴れです。",
    "!!! ??? ...",
    "The battery lasts two days, but the screen scratches far too easily.",
    "Absolutely terrible customer support; I waited three hours on hold.",
    "Der Zug nach München hatte wieder einmal vierzig Minuten Verspätung.",
    "She scored 42 points in the final, a career high.",
    "Refunds are processed within 5-7 business days.",
    "What a wonderful surprise, thank you so much!",
    "The package never arrived and nobody answered my emails.",
    "Quantum computers use qubits, which can be in superpositions of states.",
    "I love it.",
    "I hate it.",
    "It's neither good nor bad, just average.",
    "The committee postponed the vote until next Thursday.",
    "lol this is the best thing ever 😂😂",
    "Please reset my password; the link in the email has expired.",
    "Paris, London and Rome were the stops on our ten-day tour.",
    "Not bad at all, would buy again.",
)
PAIRS = (
    ("A man is playing a guitar.", "Someone is making music."),
    ("The cat sat on the mat.", "Stock prices fell sharply on Monday after the announcement."),
    ("Is it raining?", "No."),
    ("", "An empty premise."),
)
# Long enough to be truncated at any max_length we verify.
LONG_TEXT = " ".join(TEXTS[:2] + TEXTS[4:6]) * 60


@dataclass
class Case:
    """One verification batch: a name, what it exercises, and the model inputs as int64 arrays."""

    name: str
    kind: str  # "random" | "text" | "pair"
    inputs: dict[str, np.ndarray]
    padding_side: str
    texts: list[Any] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        return self.inputs["attention_mask"]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.mask.shape),
            "lengths": self.mask.sum(1).tolist(),
            "padding_side": self.padding_side,
        }


def random_case(
    name: str,
    lengths: list[int],
    width: int,
    *,
    input_names: tuple[str, ...],
    vocab_size: int,
    pad_id: int,
    padding_side: str,
    rng: np.random.Generator,
) -> Case:
    """Random ids with ``lengths[i]`` real tokens in row i, padded to ``width`` on ``padding_side``."""
    low = min(1000, vocab_size // 2)  # clear of the special tokens at the start of most vocabularies
    batch = len(lengths)
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    types = np.zeros((batch, width), dtype=np.int64)
    for row, length in enumerate(lengths):
        length = max(1, min(length, width))
        span = real_span(width, length, padding_side)
        ids[row, span] = rng.integers(low, vocab_size, size=length)
        mask[row, span] = 1
        segment = np.zeros(length, dtype=np.int64)
        segment[(length + 1) // 2 :] = 1  # a second segment, as in a sentence pair
        types[row, span] = segment
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return Case(name, "random", {k: inputs[k] for k in input_names}, padding_side)


def encode(tokenizer: Any, texts: list[Any], *, input_names, max_length: int, pad_id: int, padding_side: str) -> dict:
    """Tokenize like the runtime: truncate to max_length, pad to the longest row on ``padding_side``."""
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(direction=padding_side, pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
    try:
        encodings = tokenizer.encode_batch(texts)
    finally:
        tokenizer.no_truncation()
        tokenizer.no_padding()
    inputs = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    return {k: inputs[k] for k in input_names}


def make_cases(
    *,
    input_names: tuple[str, ...],
    vocab_size: int,
    max_length: int,
    pad_id: int,
    padding_side: str,
    tokenizer: Any,
    pairs: bool,
) -> list[Case]:
    """Batch 1 and 3-4; lengths 1, odd and max_length; different padding per row; text; pairs."""
    rng = np.random.default_rng(0)
    odd = max_length - 1 if max_length % 2 == 0 else max_length
    shapes = [
        ("random b1 len1", [1], 1),
        ("random b1 len7", [7], 7),
        ("random b4 len13 mixed padding", [13, 6, 1, 10], 13),
        # max_length is the costly width: one batch of 3 and the batch-1 truncated text below
        (f"random b3 len{max_length} mixed padding", [max_length, odd - 2, max_length // 2 + 1], max_length),
    ]
    common = dict(input_names=input_names, vocab_size=vocab_size, pad_id=pad_id, padding_side=padding_side, rng=rng)
    cases = [random_case(name, lengths, min(width, max_length), **common) for name, lengths, width in shapes]
    enc = dict(input_names=input_names, max_length=max_length, pad_id=pad_id, padding_side=padding_side)
    text_batches = [
        (f"text b{len(TEXTS)}", "text", list(TEXTS)),
        ("text b1 truncated", "text", [LONG_TEXT]),
        ("text b3 short", "text", [TEXTS[2], TEXTS[0], TEXTS[3]]),
    ]
    if pairs:
        text_batches.append(("pairs b4", "pair", list(PAIRS)))
    for name, kind, texts in text_batches:
        cases.append(Case(name, kind, encode(tokenizer, texts, **enc), padding_side, texts))
    return cases


def equal_length_cases(cases: list[Case]) -> list[Case]:
    """Each case as batches of its equal-length rows, unpadded: how a bundle whose model changes with padding is
    run (``"batch_padding": false``; the runtime then batches only rows of one length)."""
    split = []
    for case in cases:
        lengths = case.mask.sum(1).astype(int)
        width = case.mask.shape[1]
        groups = sorted(set(lengths.tolist()))
        if groups == [width]:
            split.append(case)
            continue
        for length in groups:
            rows = np.flatnonzero(lengths == length)
            span = real_span(width, length, case.padding_side)
            inputs = {name: np.ascontiguousarray(value[rows][:, span]) for name, value in case.inputs.items()}
            texts = [case.texts[i] for i in rows] if case.texts else []
            split.append(Case(f"{case.name}, rows of length {length}", case.kind, inputs, case.padding_side, texts))
    return split
