"""What the runtime accepts, checked before any work: the inputs, the per-call options, text files of inputs.

- Inputs are strings or ``(text, text_pair)`` tuples of valid Unicode (no lone surrogates); anything else
  is an :class:`InputError` naming its index and saying what to pass.
- Per-call options (``predict(texts, thresholds=0.3)``) come from a registry of known runtime options
  (:func:`register_option`), each with the heads it applies to and a value check. An unknown or misspelt
  option is an InputError naming it and listing the valid ones, never silently ignored.
- Work per input is bounded: in truncate mode a text is cut to ``max_length * CHARS_PER_TOKEN`` characters
  before it is tokenized (a 10 M-character text costs what a 32 k-character one does).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..aggregation_names import AGGREGATIONS
from ..errors import HeadregError


class InputError(HeadregError, ValueError):
    """An input or per-call option that cannot be used; the message names it and says what to pass."""


# --- inputs --------------------------------------------------------------------------------------------------------

# A token of any tokenizer we know spans far fewer characters on average (English WordPiece: ~4-5; a run of
# whitespace or a 100-character [UNK] word is one token but rare). Cutting a text to this many characters per
# token of max_length therefore never changes which tokens survive truncation in practice, and it bounds the
# tokenizer's work (and memory) per input whatever the input's length.
CHARS_PER_TOKEN = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: Any, index: int, side: str | None = None) -> None:
    where = f"input {index}" + (f" ({side})" if side else "")
    if isinstance(value, str):
        bad = None if value.isascii() else _SURROGATE.search(value)  # isascii is O(1) for an ASCII str
        if bad:
            raise InputError(
                f"{where} is not valid Unicode text: a lone surrogate {bad.group()!r} at character {bad.start()} "
                "(usually bytes decoded with errors='surrogateescape'); decode the bytes as UTF-8 with "
                "errors='replace' or fix the source text"
            )
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InputError(f"{where} is {type(value).__name__}, not text; decode it first, e.g. data.decode('utf-8')")
    if value is None:
        raise InputError(f"{where} is None; pass a string (use '' for an empty text)")
    raise InputError(f"{where} is {type(value).__name__} ({value!r:.40}), expected a string or a (text, text_pair) tuple")


def check_inputs(texts: Sequence[Any], pairs: bool, start: int = 0) -> None:
    """Raise InputError naming the first input that is neither a string nor a pair of strings.

    ``start``: the index of ``texts[0]`` in the caller's inputs (a chunk of a longer call names its real index).
    """
    for index, item in enumerate(texts, start):
        if isinstance(item, (tuple, list)):
            if len(item) != 2 or any(side is None for side in item):
                raise InputError(
                    f"input {index} is a sentence pair with a side missing ({item!r:.80}); pass (text, text_pair) "
                    "with two strings"
                )
            for side, value in zip(("text", "text_pair"), item):
                _check_text(value, index, side)
            if not pairs:
                raise InputError(f"input {index} is a sentence pair, but this bundle's tokenizer takes single texts")
            continue
        _check_text(item, index)


def as_input_list(inputs: Any) -> tuple[Iterable[Any], bool]:
    """``(inputs, single)``: one string is a single input; any other iterable is many, passed on unread (a
    generator is consumed chunk by chunk by the Predictor, never materialised whole).

    Bytes, None, numbers and mappings are refused here with a clear message (iterating ``b"abc"`` would
    give ints, a dict its keys).
    """
    if isinstance(inputs, str):
        return [inputs], True
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        raise InputError(f"inputs are {type(inputs).__name__}, not text; decode them first, e.g. data.decode('utf-8')")
    if inputs is None:
        raise InputError("inputs are None; pass a string or a list of strings")
    if isinstance(inputs, Mapping) or not isinstance(inputs, Iterable):
        raise InputError(f"inputs are {type(inputs).__name__} ({inputs!r:.40}); pass a string or a list of strings")
    return inputs, False


def char_limit(max_length: int) -> int:
    return max(int(max_length), 1) * CHARS_PER_TOKEN


def cut(item: Any, limit: int) -> Any:
    """The input with each text cut to ``limit`` characters (a prefix: offsets into it stay offsets into the original)."""
    if isinstance(item, str):
        return item[:limit] if len(item) > limit else item
    return tuple(side[:limit] if len(side) > limit else side for side in item)


# --- per-call options --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionContext:
    """What an option check may look at: the bundle's manifest and label names, and its postprocess config."""

    manifest: Mapping[str, Any]
    labels: Sequence[str]
    config: Mapping[str, Any]

    @property
    def level(self) -> str:
        return str((self.manifest.get("head") or {}).get("level", "sequence"))


@dataclass(frozen=True)
class RuntimeOption:
    """A per-call keyword the runtime understands. ``check(value, context)`` returns the value to use."""

    name: str
    check: Callable[[Any, OptionContext], Any]
    applies: Callable[[OptionContext], bool] = lambda context: True
    description: str = ""
    aliases: tuple[str, ...] = ()
    config_key: str | None = None  # the postprocess config key it sets (default: its name); None = runtime only
    runtime: bool = False  # consumed by the Predictor (long_text, heads, ...), not passed to the postprocess


RUNTIME_OPTIONS: dict[str, RuntimeOption] = {}
# postprocess_config keys a caller may not override: they describe the exported model, not a choice.
FIXED_CONFIG_KEYS = frozenset({"problem_type", "id2label", "num_ranks", "decoder"})


def register_option(option: RuntimeOption) -> RuntimeOption:
    """Add a per-call option (``long_text``, ``heads``, ...): the Predictor then accepts and checks it."""
    for name in (option.name, *option.aliases):
        RUNTIME_OPTIONS[name] = option
    return option


def _finite_fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise InputError(f"{what} must be a number between 0 and 1, got {value!r:.40}")
    return float(value)


def _check_thresholds(value: Any, context: OptionContext) -> Any:
    if isinstance(value, Mapping):
        unknown = [name for name in value if name not in context.labels]
        if unknown:
            raise InputError(
                f"thresholds names unknown label(s) {', '.join(map(repr, unknown))}; labels are: {', '.join(context.labels)}"
            )
        return {name: _finite_fraction(v, f"threshold for {name!r}") for name, v in value.items()}
    if isinstance(value, (list, tuple)):
        if context.labels and len(value) != len(context.labels):
            raise InputError(f"thresholds has {len(value)} values but the model has {len(context.labels)} labels")
        return [_finite_fraction(v, f"thresholds[{i}]") for i, v in enumerate(value)]
    return _finite_fraction(value, "thresholds")


def _check_aggregation(value: Any, context: OptionContext) -> str:
    if value not in AGGREGATIONS:
        raise InputError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {value!r:.40}")
    return value


def _check_ignore_labels(value: Any, context: OptionContext) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InputError(f"ignore_labels must be a list of label names (e.g. ['O']), got {value!r:.40}")
    if not all(isinstance(label, str) for label in value):
        raise InputError(f"ignore_labels must contain label names (strings), got {list(value)!r:.60}")
    if context.labels:
        from .postprocess import entity_type

        # entities are named by their type: "PER" for B-PER / I-PER; "O" only where the model has it
        known = list(dict.fromkeys(entity_type(label) for label in context.labels))
        unknown = [label for label in value if label not in known and label not in context.labels]
        if unknown:
            raise InputError(f"ignore_labels names unknown entity label(s) {', '.join(map(repr, unknown))}; "
                             f"this model's are: {', '.join(known)}")
    return tuple(value)


def _has_config(key: str) -> Callable[[OptionContext], bool]:
    return lambda context: key in context.config


register_option(RuntimeOption("thresholds", _check_thresholds, _has_config("thresholds"),
                              "a probability, one per label, or {label: probability}", aliases=("threshold",)))
register_option(RuntimeOption("aggregation", _check_aggregation, _has_config("aggregation"),
                              "how sub-word tokens form words: none | simple | first | average | max"))
register_option(RuntimeOption("ignore_labels", _check_ignore_labels, lambda context: context.level == "token",
                              "entity labels to drop (default ['O'])"))


def _check_return_logits(value: Any, context: OptionContext) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"return_logits must be true or false, got {value!r:.40}")
    return value


# The protocols that ask for a head's raw scores (TEI's raw_scores, Hugging Face's function_to_apply) need the
# logits the postprocess turned into probabilities; a sequence head's result carries them on request.
register_option(RuntimeOption(
    "return_logits", _check_return_logits,
    lambda context: context.level == "sequence" and not context.manifest.get("multi_head"),
    "predict only: add the head's raw 'logits' (before softmax or sigmoid) to each result", runtime=True,
))


def _same_kind(value: Any, default: Any, name: str) -> Any:
    """A plugin head's own config key: the value must be JSON of the kind its exported default is."""
    for kind in [(bool,), (int, float), (str,), (list, tuple), (dict,)]:
        if isinstance(default, kind):
            # a number is an int or a finite float, never a bool (an int of any size stays exact: no float check)
            number = kind == (int, float)
            bad_number = isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value))
            if not isinstance(value, kind) or (number and bad_number):
                raise InputError(f"option {name} must be like its exported value {default!r:.40}, got {value!r:.40}")
            return value
    return value


def valid_options(context: OptionContext) -> list[str]:
    """The per-call option names this bundle accepts, sorted."""
    names = {name for name, option in RUNTIME_OPTIONS.items() if option.applies(context)}
    names |= {key for key in context.config if key not in FIXED_CONFIG_KEYS}
    return sorted(names)


def check_options(options: Mapping[str, Any], context: OptionContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(postprocess config overrides, runtime options)`` for one call; InputError names what cannot be used."""
    valid = valid_options(context)
    unknown = sorted(name for name in options if name not in valid)
    if unknown:
        raise InputError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for head "
            f"{(context.manifest.get('head') or {}).get('name', '?')!r}; valid options: {', '.join(valid) or '(none)'}"
        )
    given: dict[str, list[str]] = {}
    for name in options:
        if name in RUNTIME_OPTIONS:
            given.setdefault(RUNTIME_OPTIONS[name].name, []).append(name)
    for names in given.values():
        if len(names) > 1:  # aliases of one option: neither may silently win
            raise InputError(f"options {' and '.join(map(repr, names))} are one option; pass only one of them")
    config: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    for name, value in options.items():
        option = RUNTIME_OPTIONS.get(name)
        if option is not None and option.applies(context):
            checked = option.check(value, context)
            if option.runtime:
                runtime[option.name] = checked
            else:
                config[option.config_key or option.name] = checked
        else:
            config[name] = _same_kind(value, context.config[name], name)
    return config, runtime


# --- text files ----------------------------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r?\n")


def _decode(data: bytes, source: str) -> str:
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{source}:{line}: not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
            "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def read_texts(path: str | os.PathLike) -> list[str | tuple[str, str]]:
    """One text per line, or JSONL objects with ``text`` (and optional ``text_pair``); ``-`` reads stdin.

    UTF-8 (a leading BOM is dropped). Lines end at ``\\n`` or ``\\r\\n`` only: form feeds, U+2028 and other
    characters ``str.splitlines`` breaks on stay inside their text. A file is JSONL when its name ends in
    ``.jsonl`` or its first non-blank line is a JSON object (a plain text that merely starts with ``{`` is text).
    """
    stdin = str(path) == "-"
    source = "<stdin>" if stdin else str(path)
    text = _decode(sys.stdin.buffer.read() if stdin else Path(path).read_bytes(), source)
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it does not start an empty one
    by_name = str(path).endswith(".jsonl")
    if by_name or _json_object(next((line for line in lines if line.strip()), "")):
        why = "" if by_name else "; it was read as JSONL because its first line is a JSON object"
        items: list[str | tuple[str, str]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text_value = record["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{source}:{number}: expected a JSON object with a 'text' field ({exc}){why}") from exc
            pair = record.get("text_pair")
            for side, value in (("text", text_value), ("text_pair", pair)):
                if not isinstance(value, str) and (side == "text" or value is not None):
                    raise InputError(f"{source}:{number}: '{side}' must be a string, got {type(value).__name__}")
            items.append((text_value, pair) if pair is not None else text_value)
        return items
    return lines
