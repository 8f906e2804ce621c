"""Long inputs as overlapping windows (``long_text="window"``): numpy and tokenizers only, no session.

Three steps, each a pure function the Predictor calls:

1. :func:`encode_windows` cuts each input into windows of at most ``max_length`` tokens with the fast
   tokenizer's own overflow (``enable_truncation(max_length, stride=overlap)``): every window carries its
   special tokens, and offsets and word ids that index the whole original text. A sentence pair keeps its
   first text whole in every window and slides over the second (``only_second``).
2. The windows run as ordinary rows (length-bucketed with every other row).
3. :func:`merge_windows` turns one input's window outputs back into one row over a :class:`WholeEncoding` of
   the whole text, so postprocess (``aggregate_tokens``, a CRF's Viterbi) runs once over the whole text.
   Token-level outputs take each token from one of the windows that read it, chosen so that no word and no
   entity is cut (:func:`window_sources`, the rule below); row-level outputs (sequence logits,
   ``pooled_output``) are reduced over the windows with :func:`reduce_windows` (``mean`` | ``max`` | ``first``).

Which window a token comes from. Each window's own decisions (the argmax label of each token, in the head's
labels) say where its entities are: a label continues the entity of the token before it when it is ``I-X`` or a
bare ``X`` after an ``X`` (``B-X`` starts one, ``O`` is outside). Neighbouring windows A and B share the tokens
``[s, e)``; before ``s`` tokens are A's, from ``e`` on B's, and in between each token is taken from A or B. A
change of window between tokens ``m - 1`` and ``m`` *cuts* an entity for each of: the two tokens' labels (one
from each window) join into one entity; the window left behind reads its entity on past ``m``; the window
switched to read its entity as begun before ``m``. At a window's own edge it cannot see across: A's last token
cuts when it is in an entity that B reads going on; B's first token cuts only through the first case (it says
``I-X`` after a token A reads in an ``X``). A first token that says ``I-X`` after a token A reads as outside
continues nothing any window sees: it is a fragment both readings have to choose between, like any other.
Among all assignments of the shared tokens (dynamic programming over the overlap), headreg takes the one that,
in strict priority: changes window inside no word; cuts the fewest entities; takes the fewest tokens from the
window whose entity around them is shorter, outside counting as length 0 (so an entity either window reads whole
is kept, and of two overlapping readings the longer); takes the most tokens from their most central window (where
their distance to the nearest cut is largest, the rule before entities were considered); changes window the
fewest times; on a tie, keeps the earlier window. So where the overlap holds a point that cuts nothing, every merged entity is an entity one
window read whole (``12-3456789`` no longer comes out as ``-3456789``). An entity longer than the overlap and
astride it is read whole by no window, and no merge can recover it: a larger ``window_stride`` does. With an
overlap over half a window a token is chosen between its two neighbouring windows only. Outputs without labels
(no ``id2label``, or not one score per label) still never change window inside a word.

transformers' ``pipeline("token-classification", stride=...)`` merges *entities* instead: it decodes each window
alone and, where entities of different windows overlap, keeps the longest: like the rule above it keeps an
entity either window reads whole, and the longer of overlapping readings. But
headreg decodes once over the whole text, so a CRF's Viterbi and word aggregation see one sequence, and scores
come from the window each token was taken from (docs/runtime.md compares them on a trained tagger).

"Overlap" is the number of tokens two neighbouring windows share; transformers and tokenizers call it
``stride``. A window of ``room`` tokens for the text (``max_length`` minus special tokens, minus the first
text of a pair) advances by ``room - overlap`` tokens.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import HeadregError
from .inputs import InputError, RuntimeOption, register_option
from .postprocess import entity_type

LONG_TEXT = ("truncate", "window")
WINDOW_REDUCE = ("mean", "max", "first")
# Windowed reading has no length cut, so its work per input is bounded here instead: at most MAX_WINDOWS
# windows (MiniLM at 512 tokens: ~130k tokens, a few seconds) unless whoever runs the model sets another
# ceiling (Predictor(max_windows=...), headreg serve --max-windows); a call may ask for fewer, never more.
# Past it an input is refused with an InputError, never read partly, and refused before its windows are cut:
# from its character count when even 16 characters per token (about three times what natural text averages)
# need too many windows, else from its exact token count.
MAX_WINDOWS = 256
CHARS_PER_TOKEN_WINDOWED = 16
# Neighbouring windows advance by at least 1/MIN_STEP_DIVISOR of a window's room, so a token is read by at most
# this many windows (an overlap of room - 1 would read a 10k-token text as 10k windows).
MIN_STEP_DIVISOR = 8
# The exact count before windows are cut tokenizes this many characters at a time and stops once past the budget.
COUNT_CHUNK_CHARS = 32_768


@dataclass(frozen=True)
class WindowOptions:
    """A call's long-text options, checked. ``overlap=None``: a quarter of each window's room for the text."""

    long_text: str = "truncate"
    overlap: int | None = None
    reduce: str = "mean"
    max_windows: int = MAX_WINDOWS

    @property
    def windowed(self) -> bool:
        return self.long_text == "window"


def window_options(options: Mapping[str, Any], ceiling: int | None = None) -> WindowOptions:
    """Check a call's ``long_text`` / ``window_stride`` / ``window_reduce`` / ``max_windows``; ``ceiling``: the
    most ``max_windows`` may be (also its default; None: MAX_WINDOWS, unchecked)."""
    long_text = options.get("long_text")
    long_text = "truncate" if long_text is None else long_text
    if long_text not in LONG_TEXT:
        raise InputError(f"long_text must be one of {', '.join(map(repr, LONG_TEXT))}, got {long_text!r}")
    overlap = options.get("window_stride")
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0):
        raise InputError(f"window_stride (the overlap in tokens) must be an integer >= 0, got {overlap!r}")
    reduce = options.get("window_reduce")
    reduce = "mean" if reduce is None else reduce
    if reduce not in WINDOW_REDUCE:
        raise InputError(f"window_reduce must be one of {', '.join(map(repr, WINDOW_REDUCE))}, got {reduce!r}")
    max_windows = options.get("max_windows")
    max_windows = (ceiling or MAX_WINDOWS) if max_windows is None else max_windows
    if isinstance(max_windows, bool) or not isinstance(max_windows, (int, np.integer)) or max_windows < 1:
        raise InputError(f"max_windows must be an integer >= 1, got {max_windows!r}")
    if ceiling is not None and max_windows > ceiling:
        raise InputError(
            f"max_windows={max_windows} is above the ceiling of {ceiling} windows per input set where this model "
            f"runs; pass at most {ceiling}, or split the input"
        )
    if long_text != "window":
        given = [
            name for name in ("window_stride", "window_reduce", "max_windows")
            if options.get(name) is not None
        ]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise InputError(f"{', '.join(given)} only {verb} with long_text='window' (this call truncates long inputs)")
    return WindowOptions(long_text, None if overlap is None else int(overlap), reduce, int(max_windows))


def _checked(name: str):
    """The registry's value check for one option: the same rules as :func:`window_options`, one name at a time."""

    def check(value: Any, context: Any) -> Any:
        window_options({"long_text": "window", name: value} if name != "long_text" else {name: value})
        return value

    return check


# The Predictor accepts these per call (runtime options, not postprocess config); window_options checks how
# they combine (window_* only with long_text="window").
for _name, _description in (
    ("long_text", "truncate | window: texts past max_length are cut, or read in overlapping windows"),
    ("window_stride", "with long_text='window': tokens neighbouring windows share (the overlap, not the step)"),
    ("window_reduce", "with long_text='window', sequence heads: mean | max | first over the windows' logits"),
    ("max_windows", f"with long_text='window': the most windows one input may need (default {MAX_WINDOWS}); "
                    "a longer input is refused, not cut"),
):
    register_option(RuntimeOption(_name, _checked(_name), runtime=True, description=_description))


def check_window_budget(inputs: Sequence[Any], max_length: int, max_windows: int, ceiling: int | None = None) -> None:
    """InputError naming the first input whose characters need more than ``max_windows`` windows that do not
    overlap, so a huge input is refused before the tokenizer spends time and memory on it (``encode_windows``
    checks each input against its actual overlap). ``ceiling``: the most a call may ask for (named in the hint).
    """
    limit = max_windows * max_length * CHARS_PER_TOKEN_WINDOWED
    for index, item in enumerate(inputs):
        chars = len(item) if isinstance(item, str) else sum(len(side) for side in item)
        if chars > limit:
            raise _too_many_windows(
                index, f"has {chars} characters (more than {max_windows} windows of {max_length} tokens can hold)",
                max_windows, ceiling,
            )


def _too_many_windows(index: int, what: str, max_windows: int, ceiling: int | None) -> InputError:
    # Never suggest more than the ceiling: the caller cannot have it.
    hint = (f"Pass max_windows up to {ceiling}, split the input, or use long_text='truncate'."
            if ceiling is not None and max_windows < ceiling else "Split the input, or use long_text='truncate'.")
    return InputError(
        f"input {index} {what}; long_text='window' reads at most max_windows={max_windows} windows per input. {hint}"
    )


def windows_needed(tokens: int, room: int, overlap: int) -> int:
    """How many windows of ``room`` text tokens, neighbours sharing ``overlap``, a text of ``tokens`` tokens takes."""
    if tokens <= room:
        return 1
    step = room - overlap
    return 1 + -(-(tokens - room) // step)


def min_window_step(room: int) -> int:
    """The smallest step between neighbouring windows of ``room`` text tokens (see MIN_STEP_DIVISOR)."""
    return max(1, -(-room // MIN_STEP_DIVISOR))


def _check_overlap(overlap: int, room: int, what: str) -> None:
    if overlap >= room:
        raise InputError(f"window_stride={overlap} (the overlap) must be smaller than the {room} tokens {what}; "
                         f"pass at most {room - min_window_step(room)}")
    if room - overlap < min_window_step(room):
        raise InputError(
            f"window_stride={overlap} (the overlap) moves windows of {room} tokens on by {room - overlap} token(s); "
            f"a window moves on by at least {min_window_step(room)} (each token is read by at most "
            f"{MIN_STEP_DIVISOR} windows): pass at most {room - min_window_step(room)}"
        )


def _check_input_windows(tokenizer: Any, index: int, text: str, room: int, overlap: int, max_windows: int | None,
                         ceiling: int | None) -> None:
    """Refuse a text that would need more than ``max_windows`` windows, before its windows are cut: from its
    characters and words when that is certain, else from its tokens, counted piece by piece without the
    overflow's copies and only until the count is past the budget."""
    if max_windows is None or len(text) <= room:
        return
    # At least one token per CHARS_PER_TOKEN_WINDOWED characters and one per whitespace-separated word; at most
    # two per UTF-8 byte (byte-level BPE gives one per byte, SentencePiece adds a word-start piece).
    least = windows_needed(max(-(-len(text) // CHARS_PER_TOKEN_WINDOWED), _words_at_least(text)), room, overlap)
    if least > max_windows:
        raise _too_many_windows(index, f"has {len(text)} characters (at least {least} windows)", max_windows, ceiling)
    if windows_needed(2 * len(text.encode("utf-8")), room, overlap) <= max_windows:
        return
    tokenizer.no_truncation()
    counted = 0
    for pieces, chunk in enumerate(_chunks(text, COUNT_CHUNK_CHARS)):
        counted += len(tokenizer.encode(chunk, add_special_tokens=False))
        # A cut between two chunks may split what would be one token: count one fewer per cut.
        if windows_needed(counted - pieces, room, overlap) > max_windows:
            raise _too_many_windows(index, f"needs more than {max_windows} windows", max_windows, ceiling)


def _words_at_least(text: str) -> int:
    """``len(text.split())`` (a lower bound on the tokens), counted without ``split``'s list of strings for an ASCII
    text (a 1 MB text of short words: 0.3 ms instead of 10 ms, the cost of refusing it)."""
    if not text.isascii():  # Unicode spaces (NBSP, U+3000...) split words too: let str.split find them
        return len(text.split())
    if not text:
        return 0
    chars = np.frombuffer(text.encode("ascii"), np.uint8)
    space = (chars == 32) | ((chars >= 9) & (chars <= 13)) | ((chars >= 28) & (chars <= 31))  # str.isspace's ASCII
    return int(np.count_nonzero(space[:-1] & ~space[1:])) + int(not space[0])


def _chunks(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut after whitespace where there is some."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = space + 1 if space > start else end
        yield text[start:end]
        start = end


class TokenizerCopies:
    """Private copies of a tokenizer for :func:`encode_windows`, which reconfigures the one it is given.

    Borrowed for one call and given back: a copy is made only when every kept one is in use, and at most
    ``keep`` are kept between calls (extra ones made during a burst are dropped). A copy of MiniLM's tokenizer
    holds about 6 MB and takes about 15 ms to make: one per thread (the event loop's and every worker's of a
    server) kept ~40 MB of copies, most of them idle.
    """

    def __init__(self, tokenizer: Any, keep: int | None = None):
        self._json = tokenizer.to_str()
        self.keep = max(1, keep if keep is not None else min(os.cpu_count() or 1, 4))
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self.made = 0

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[Any]:
        with self._lock:
            copy = self._free.pop() if self._free else None
            self.made += copy is None
        if copy is None:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(self._json)
        try:
            yield copy
        finally:
            with self._lock:
                if len(self._free) < self.keep:
                    self._free.append(copy)


def default_overlap(room: int) -> int:
    """A quarter of the window's room for the text: each token keeps at least 1/8 window of context per side."""
    return max(room, 0) // 4


def window_tokens_at_least(inputs: Sequence[Any], max_length: int, special: int, overlap: int | None) -> int:
    """A lower bound on the tokens reading ``inputs`` in windows gives (overlaps counted again), from their
    whitespace-separated words (each at least one token, whatever the tokenizer; characters are no bound: WordPiece
    reads a 50,000-character word as one [UNK]): what a server can refuse before tokenizing. Sentence pairs count
    0; ``special``: the special tokens of one window."""
    room = max_length - special
    if room < 1:
        return 0
    chosen = min(default_overlap(room) if overlap is None else overlap, room - min_window_step(room))
    total = 0
    for item in inputs:
        if isinstance(item, str):
            tokens = _words_at_least(item)
            total += tokens + (windows_needed(tokens, room, max(chosen, 0)) - 1) * max(chosen, 0)
    return total


@dataclass
class Windows:
    """One input's windows in text order; neighbours share ``overlap`` tokens of sequence ``sequence``."""

    encodings: list[Any]
    overlap: int
    sequence: int  # the sequence the windows slide over: 0 (a text) or 1 (the text_pair of a pair)


def encode_windows(
    tokenizer: Any, inputs: Sequence[str | tuple[str, str]], max_length: int, overlap: int | None = None,
    max_windows: int | None = None, ceiling: int | None = None,
) -> list[Windows]:
    """Tokenize ``inputs`` into windows of at most ``max_length`` tokens each (an input that fits: one window).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` this function reconfigures (truncation), so a private copy,
    not one other threads encode with. Sentence pairs keep the first text whole in every window; a pair whose
    first text leaves no room for the second, or less than ``overlap + 1`` tokens of it, is an InputError
    naming the input (unless the whole pair fits one window). Inputs are assumed checked (check_inputs).
    ``max_windows``: an input that needs more windows is an InputError, before its windows are cut when its
    length already tells (``ceiling``: the most a call may ask for, named in the hint).
    """
    tokenizer.no_padding()
    results: list[Windows | None] = [None] * len(inputs)
    singles = [i for i, item in enumerate(inputs) if isinstance(item, str)]
    pairs = [i for i in range(len(inputs)) if not isinstance(inputs[i], str)]
    if singles:
        room = max_length - tokenizer.num_special_tokens_to_add(False)
        if room < 1:
            raise InputError(f"max_length={max_length} leaves no room for text beside the special tokens")
        chosen = default_overlap(room) if overlap is None else overlap
        _check_overlap(chosen, room, f"a window of max_length={max_length} holds")
        for index in singles:
            _check_input_windows(tokenizer, index, inputs[index], room, chosen, max_windows, ceiling)
        _encode_group(tokenizer, inputs, singles, max_length, chosen, "longest_first", 0, results)
    if pairs:
        _encode_pairs(tokenizer, inputs, pairs, max_length, overlap, results, max_windows, ceiling)
    for index, windows in enumerate(results):
        if max_windows is not None and len(windows.encodings) > max_windows:
            raise _too_many_windows(index, f"needs {len(windows.encodings)} windows", max_windows, ceiling)
    return results  # type: ignore[return-value]


def _encode_pairs(
    tokenizer: Any, inputs: Sequence[Any], pairs: list[int], max_length: int, overlap: int | None, results: list,
    max_windows: int | None = None, ceiling: int | None = None,
) -> None:
    tokenizer.no_truncation()
    firsts = tokenizer.encode_batch([inputs[i][0] for i in pairs], add_special_tokens=False)
    budget = max_length - tokenizer.num_special_tokens_to_add(True)
    groups: dict[int, list[int]] = {}
    cramped: list[tuple[int, int, int]] = []  # (input, first text's tokens, overlap asked) without room to slide
    rooms: dict[int, int] = {}
    for index, first in zip(pairs, firsts):
        room = rooms[index] = budget - len(first)
        chosen = default_overlap(room) if overlap is None else overlap
        if room < 1 or chosen >= room:
            cramped.append((index, len(first), chosen))
        else:
            _check_overlap(chosen, room, f"input {index}'s windows hold of its text_pair")
            groups.setdefault(chosen, []).append(index)
    for chosen, members in groups.items():
        for index in members:
            _check_input_windows(tokenizer, index, inputs[index][1], rooms[index], chosen, max_windows, ceiling)
    for chosen, members in groups.items():
        _encode_group(tokenizer, inputs, members, max_length, chosen, "only_second", 1, results)
    if cramped:
        # Such a pair is fine when it fits one window whole; only a pair that needs windows is refused.
        tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first")
        encodings = tokenizer.encode_batch([tuple(inputs[i]) for i, _, _ in cramped])
        for (index, first_tokens, chosen), encoding in zip(cramped, encodings):
            if not encoding.overflowing:
                results[index] = Windows([encoding], 0, 1)
                continue
            room = budget - first_tokens
            if room < 1:
                raise InputError(
                    f"input {index}: the first text of the pair has {first_tokens} tokens and fills the whole "
                    f"window (max_length={max_length}); long_text='window' keeps the first text whole and slides "
                    "over text_pair. Shorten the first text, swap the pair, or use long_text='truncate'."
                )
            raise InputError(
                f"input {index}: the first text of the pair has {first_tokens} tokens, which leaves {room} tokens "
                f"per window for text_pair: window_stride={chosen} (the overlap) must be below {room}"
            )


def _encode_group(
    tokenizer: Any, inputs: Sequence[Any], members: list[int], max_length: int, overlap: int, strategy: str,
    sequence: int, results: list,
) -> None:
    tokenizer.enable_truncation(max_length, stride=overlap, strategy=strategy)
    encodings = tokenizer.encode_batch([inputs[i] if sequence == 0 else tuple(inputs[i]) for i in members])
    for index, encoding in zip(members, encodings):
        # The overflow's encodings are the following windows; the first window no longer needs to hold them.
        windows = [encoding, *encoding.overflowing]
        results[index] = Windows(windows, overlap if len(windows) > 1 else 0, sequence)


# --- merging one input's windows ----------------------------------------------------------------------------


@dataclass
class WholeEncoding:
    """The whole text's tokens, as one ``tokenizers.Encoding``-like row built from its windows.

    Has what postprocess reads from an encoding (``len``, ``ids``, ``type_ids``, ``tokens``, ``offsets``,
    ``word_ids``, ``sequence_ids``, ``special_tokens_mask``, ``attention_mask``); offsets index the original
    text, word ids are the whole text's. ``windows`` is each window's content span ``(start, end)`` in these
    positions.
    """

    ids: list[int]
    type_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    special_tokens_mask: list[int]
    windows: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.ids)

    @property
    def words(self) -> list[int | None]:
        return self.word_ids

    @property
    def n_sequences(self) -> int:
        return len({s for s in self.sequence_ids if s is not None})

    @property
    def overflowing(self) -> list[Any]:
        return []


def content_span(encoding: Any, sequence: int) -> tuple[int, int]:
    """``(start, end)`` positions of ``encoding``'s non-special tokens of ``sequence`` (contiguous)."""
    positions = [
        p for p, (s, special) in enumerate(zip(encoding.sequence_ids, encoding.special_tokens_mask))
        if s == sequence and not special
    ]
    if not positions:
        return (0, 0)
    if positions[-1] - positions[0] + 1 != len(positions):
        raise HeadregError(f"the tokenizer interleaves sequence {sequence} with other tokens; cannot merge windows")
    return positions[0], positions[-1] + 1


def central_windows(lengths: Sequence[int], overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """For windows of ``lengths`` content tokens sharing ``overlap`` with each neighbour: per whole-text token,
    (the window it is taken from, its position in that window's content).

    A token is taken from the window where its distance to the nearest cut is largest; the text's own start
    and end are not cuts (no window sees beyond them). Ties go to the earlier window.
    """
    starts = np.concatenate([[0], np.cumsum(np.asarray(lengths[:-1], dtype=np.int64) - overlap)]).astype(np.int64)
    total = int(starts[-1] + lengths[-1])
    best = np.zeros(total, dtype=np.int64)
    score = np.full(total, -np.inf)
    last = len(lengths) - 1
    for window, (start, length) in enumerate(zip(starts, lengths)):
        positions = np.arange(start, start + length)
        left = positions - start if window > 0 else np.full(length, np.inf)
        right = start + length - 1 - positions if window < last else np.full(length, np.inf)
        distance = np.minimum(left, right)
        better = distance > score[positions]
        best[positions[better]] = window
        score[positions[better]] = distance[better]
    return best, np.arange(total) - starts[best]


@functools.lru_cache(maxsize=4096)  # a head has few labels: the same pairs come back for every token
def _continues(previous: str, label: str, outside: frozenset[str]) -> bool:
    """Whether a token labelled ``label`` continues the entity of a token labelled ``previous`` before it."""
    kind = entity_type(label)
    return kind not in outside and not label.startswith("B-") and entity_type(previous) == kind


@functools.lru_cache(maxsize=4096)
def _is_inside(label: str, outside: frozenset[str]) -> bool:
    return entity_type(label) not in outside


# The costs window_sources minimises, in strict priority: a window switch inside a word, then each entity a
# switch cuts, then each token taken from the window whose entity around it is shorter (outside: length 0),
# then each token not taken from its most central window, then each switch, then each token taken from the
# later window (a tie keeps the earlier). Each weight exceeds any total of the ones below it for overlaps of up
# to 2**20 tokens (Python integers do not overflow).
_WORD, _CUT, _ENTITY, _OFF_CENTRE, _SWITCH, _LATER = 1 << 125, 1 << 100, 1 << 75, 1 << 50, 1 << 25, 1


def window_sources(
    starts: Sequence[int],
    lengths: Sequence[int],
    central: np.ndarray,
    words: Sequence[Any],
    decisions: Sequence[Sequence[str]] | None = None,
    outside: frozenset[str] = frozenset({"O"}),
) -> np.ndarray:
    """Per whole-text content token, the window its outputs are taken from (the rule in the module docstring).

    ``starts``/``lengths``: each window's content span in whole-text positions; ``central``: each token's most
    central window (:func:`central_windows`); ``words``: the whole text's word ids (None: a word of its own);
    ``decisions``: per window, the label of each of its content tokens (None: no labels known: then only
    words are kept whole).
    """
    source = np.asarray(central, dtype=np.int64).copy()

    def label(window: int, position: int) -> str:
        return decisions[window][position - starts[window]]

    def inside(window: int, position: int) -> bool:
        return _is_inside(label(window, position), outside)

    # per window, the length in tokens of the entity each of its tokens is in, as that window reads it (0: outside)
    extent: list[np.ndarray] = []
    for window in range(len(starts) if decisions is not None else 0):
        runs = np.zeros(lengths[window], dtype=np.int64)
        begin = 0
        for i in range(1, lengths[window] + 1):
            if i == lengths[window] or not _continues(decisions[window][i - 1], decisions[window][i], outside):
                if _is_inside(decisions[window][begin], outside):
                    runs[begin:i] = i - begin
                begin = i
        extent.append(runs)

    def cuts(m: int, left: int, right: int) -> int:
        """Entities cut by taking token m - 1 from ``left`` and token m from ``right``."""
        if decisions is None:
            return 0
        count = _continues(label(left, m - 1), label(right, m), outside)
        # the left window's entity goes on past m (at its own end, when the right window reads it going on)
        if m < starts[left] + lengths[left]:
            count += _continues(label(left, m - 1), label(left, m), outside)
        else:
            count += inside(left, m - 1) and _continues(label(right, m - 1), label(right, m), outside)
        # the right window's entity began before m (at its own start, only the first term can tell: A alone sees m - 1)
        if m > starts[right]:
            count += _continues(label(right, m - 1), label(right, m), outside)
        return count

    done = 0  # tokens before this are assigned
    for a in range(len(starts) - 1):
        b = a + 1
        end = starts[a] + lengths[a]  # A's end: tokens from here on are B's
        # position ``done`` is A's: the previous pair's last switch was judged into A there
        first = max(starts[b], done + 1)
        source[done:first] = a
        region = range(first, end)
        if not region:
            done = end
            continue
        # Dynamic programming over the region, two states (A, B); position first - 1 is A's, position end B's.
        states = (a, b)
        cost = [[0, 0] for _ in region]
        back = [[0, 0] for _ in region]

        def switch(m: int, u: int, v: int) -> int:
            if u == v:
                return 0
            word = 0 < m < len(words) and words[m] is not None and words[m] == words[m - 1]
            return _WORD * bool(word) + _CUT * int(cuts(m, u, v)) + _SWITCH

        def token(p: int, w: int) -> int:
            other = a if w == b else b
            shorter = decisions is not None and bool(extent[w][p - starts[w]] < extent[other][p - starts[other]])
            return _ENTITY * shorter + _OFF_CENTRE * bool(w != central[p]) + _LATER * (w == b)

        for i, p in enumerate(region):
            for j, w in enumerate(states):
                if i == 0:
                    options = [(switch(p, a, w), 0, 0)]
                else:
                    options = [(cost[i - 1][k] + switch(p, states[k], w), k != j, k) for k in (j, 1 - j)]
                best = min(options)
                cost[i][j] = best[0] + token(p, w)
                back[i][j] = best[2]
        totals = [cost[-1][j] + (switch(end, w, b) if end < len(words) else 0) for j, w in enumerate(states)]
        j = 1 if totals[1] < totals[0] else 0
        for i in range(len(region) - 1, -1, -1):
            source[region[i]] = states[j]
            j = back[i][j]
        done = end
    source[done:] = len(starts) - 1
    return source


def reduce_windows(values: Sequence[np.ndarray] | np.ndarray, how: str) -> np.ndarray:
    """One row from per-window rows: their ``mean``, elementwise ``max``, or the ``first`` window's."""
    stacked = np.stack([np.asarray(v) for v in values])
    if how == "mean":
        return stacked.mean(axis=0).astype(stacked.dtype, copy=False)
    if how == "max":
        return stacked.max(axis=0)
    if how == "first":
        return stacked[0]
    raise ValueError(f"window_reduce must be one of {', '.join(WINDOW_REDUCE)}, got {how!r}")


def merge_windows(
    windows: Sequence[Any],
    outputs: Sequence[Mapping[str, np.ndarray]],
    axes: Mapping[str, str],
    overlap: int,
    sequence: int = 0,
    reduce: str = "mean",
    labels: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """One input's windows (encodings, in order) and their outputs -> (the whole text's encoding, its outputs).

    ``axes`` says per output name whether it is per ``token`` (``[tokens, ...]``, cut to the row),
    per ``row`` (``[...]``) or ``shared`` by every row. Token outputs switch windows once per overlap, where no
    word and no entity is cut (:func:`window_sources`); ``labels`` names, per token output, the label of each
    of its scores (a token head's ``id2label`` in order), from which each window's entities are read. Tokens
    outside the windowed sequence (special tokens, the first text of a pair) come from the first window, the
    trailing special tokens from the last. Row outputs are reduced with :func:`reduce_windows`. A single
    window comes back as it is.
    """
    if len(windows) != len(outputs) or not windows:
        raise HeadregError(f"merge_windows got {len(windows)} windows and {len(outputs)} outputs")
    if len(windows) == 1:
        return windows[0], dict(outputs[0])
    spans = [content_span(encoding, sequence) for encoding in windows]
    lengths = [end - start for start, end in spans]
    _check_overlaps(windows, spans, overlap)
    chosen, _ = central_windows(lengths, overlap)
    starts = np.concatenate([[0], np.cumsum(np.asarray(lengths[:-1], dtype=np.int64) - overlap)]).astype(np.int64)
    head_end, tail_start = spans[0][0], spans[-1][1]
    first_row = np.concatenate([[0], np.cumsum([len(encoding) for encoding in windows[:-1]])]).astype(np.int64)

    def sources(window_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window, position in that window) for every token of the whole text: prefix, text, suffix."""
        position_of = np.arange(len(window_of)) - starts[window_of] + np.asarray([a for a, _ in spans], np.int64)[window_of]
        return (
            np.concatenate([np.zeros(head_end, np.int64), window_of,
                            np.full(len(windows[-1]) - tail_start, len(windows) - 1, np.int64)]),
            np.concatenate([np.arange(head_end), position_of, np.arange(tail_start, len(windows[-1]))]),
        )

    source_window, source_position = sources(chosen)
    # The source window changes a few times along the text: copy runs of tokens as slices.
    breaks = np.flatnonzero(np.diff(source_window)) + 1
    runs = [
        (int(source_window[a]), int(source_position[a]), int(source_position[a]) + int(b - a))
        for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(source_window)]]))
    ]

    def gather(attribute: str) -> list[Any]:
        values = [getattr(encoding, attribute) for encoding in windows]
        return [value for w, start, end in runs for value in values[w][start:end]]

    whole = WholeEncoding(
        ids=gather("ids"),
        type_ids=gather("type_ids"),
        tokens=gather("tokens"),
        offsets=[tuple(o) for o in gather("offsets")],
        word_ids=gather("word_ids"),
        sequence_ids=gather("sequence_ids"),
        special_tokens_mask=gather("special_tokens_mask"),
        windows=[(int(s) + head_end, int(s) + head_end + n) for s, n in zip(starts, lengths)],
    )
    words = whole.word_ids[head_end : head_end + len(chosen)]
    merged: dict[str, np.ndarray] = {}
    for name in outputs[0]:
        kind = axes.get(name, "row")
        if kind == "shared":
            merged[name] = outputs[0][name]
        elif kind == "token":
            values = [np.asarray(out[name]) for out in outputs]
            names = (labels or {}).get(name)
            decisions = None
            if names and all(v.ndim == 2 and v.shape[-1] == len(names) for v in values):
                decisions = [[names[i] for i in v[a:b].argmax(-1)] for v, (a, b) in zip(values, spans)]
            window_of = window_sources(starts.tolist(), lengths, chosen, words, decisions)
            rows, positions = sources(window_of)
            merged[name] = np.concatenate(values)[first_row[rows] + positions]
        else:
            merged[name] = reduce_windows([out[name] for out in outputs], reduce)
    return whole, merged


def _check_overlaps(windows: Sequence[Any], spans: Sequence[tuple[int, int]], overlap: int) -> None:
    """Neighbouring windows must share exactly ``overlap`` tokens (what the tokenizer's overflow promises)."""
    for (a, b), (c, d), left, right in zip(spans, spans[1:], windows, windows[1:]):
        if b - a < overlap or list(left.ids[b - overlap : b]) != list(right.ids[c : c + overlap]):
            raise HeadregError(
                "a window does not continue where the previous one ends (the tokenizer's overflow is not the "
                f"sliding window it should be); windows {(a, b)} and {(c, d)}, overlap {overlap}"
            )
