"""What ``headreg export SOURCE`` loads: a saved headreg model, a transformers task checkpoint, or a backbone.

- a directory written by ``HeadedModel.save_pretrained`` (``headreg_model.json``);
- a transformers checkpoint with a task head (``*ForSequenceClassification`` / ``*ForTokenClassification``
  in ``config.json``), imported through :func:`headreg.from_transformers`;
- a backbone directory plus ``head=`` and ``num_labels=`` (or ``id2label=``): a fresh, untrained head, pooled
  as the checkpoint says (a sentence-transformers ``modules.json``, see headreg/sentence_modules.py) unless
  ``pooling=`` names a pooling.

:func:`inspect_source` decides which, and rejects what cannot work, from the files alone: no torch is
imported, so a mistake is reported in a fraction of a second rather than after the torch import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import HeadConfigError, HeadregError
from ..files import BACKBONE_DIR, MODEL_CONFIG

TASK_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class SourceError(HeadregError, ValueError):
    """SOURCE is missing, not a model, or needs options it was not given."""


@dataclass
class Source:
    model: Any  # HeadedModel
    tokenizer: Any  # a path or a tokenizer object
    info: dict[str, Any]  # the manifest's "source": {"path", "kind"}
    untrained: bool = False
    max_length: int | None = None  # the checkpoint's own input limit (sentence-transformers' max_seq_length)


@dataclass
class SourcePlan:
    """What SOURCE is and how it will be loaded, decided without torch."""

    path: Path
    kind: str  # "headreg" | "transformers" | "backbone"
    task: str | None  # the checkpoint's *For...Classification architecture
    tokenizer: Any  # a path, a tokenizer object, or None when none was found
    head: str | None = None
    num_labels: int | None = None
    pickled: bool = False  # the weights are pytorch_model.bin (loaded only with allow_bin=True)
    pooling: str | None = None  # a fresh head's pooling; None: the checkpoint's own (auto)
    id2label: dict[int, str] | None = None  # a fresh head's label names
    allow_bin: bool = False


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


def _config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc


def _weights_format(path: Path, allow_bin: bool) -> bool:
    """True when the weights are pickled (.bin) and allowed; SourceError when they cannot be loaded safely."""
    if any((path / name).is_file() for name in SAFE_WEIGHTS):
        return False
    if not any((path / name).is_file() for name in PICKLED_WEIGHTS):
        raise SourceError(f"{path} has no model weights (model.safetensors); pass the directory save_pretrained wrote")
    if allow_bin:
        return True
    raise SourceError(
        f"{path} has its weights only as pytorch_model.bin, a pickle, which headreg does not load by default; "
        "pass --allow-bin (Python: allow_bin=True) to load it with torch.load(weights_only=True), which restores "
        "tensors only, or convert it once with: headreg convert "
        f"{path} {path}-safetensors"
    )


def inspect_source(
    path: str | Path,
    *,
    head: str | None = None,
    num_labels: int | None = None,
    tokenizer: Any = None,
    allow_bin: bool = False,
    pooling: str | None = None,
    id2label: Sequence[str] | Mapping[Any, str] | None = None,
) -> SourcePlan:
    """Classify SOURCE and check the options that go with it; SourceError says what to change. No torch.

    ``pooling`` and ``id2label`` (label names in order, or index -> name) apply to a fresh head only;
    ``id2label`` alone sets ``num_labels``.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise SourceError(f"SOURCE {path} does not exist; pass a model directory (save_pretrained output)")
    if not path.is_dir():
        raise SourceError(f"SOURCE {path} is a file; pass a model directory (save_pretrained output)")
    if head is not None:
        from ..installed import get_head

        get_head(head)  # UnknownHeadError names the close matches and the installed heads
    fresh_only = [flag for flag, value in (("--pooling", pooling), ("--labels/--id2label", id2label)) if value is not None]
    labels = _label_names(id2label, num_labels)
    if labels is not None and num_labels is None:
        num_labels = len(labels)
    if (path / MODEL_CONFIG).is_file():
        if head is not None or num_labels is not None or fresh_only:
            given = "/".join(["--head/--num-labels"] * (head is not None or num_labels is not None) + fresh_only)
            raise SourceError(f"{path} is a saved headreg model that already has a head; drop {given}")
        if tokenizer is None:
            try:
                saved = json.loads((path / MODEL_CONFIG).read_text()).get("tokenizer_source")
            except (OSError, ValueError, AttributeError):
                saved = None  # load_model reports the corrupt file with its own message
            candidates = [path, Path(saved) if isinstance(saved, str) else None, path / BACKBONE_DIR]
            tokenizer = next((c for c in candidates if c is not None and _has_tokenizer(c)), None)
        return SourcePlan(path, "headreg", None, tokenizer)
    if not (path / "config.json").is_file():
        raise SourceError(
            f"SOURCE {path} is not a model directory: it has neither {MODEL_CONFIG} (headreg save_pretrained) "
            "nor config.json (transformers save_pretrained)"
        )
    architectures = _config(path).get("architectures") or []
    task = next((arch for arch in architectures if arch.endswith(TASK_SUFFIXES)), None)
    tokenizer = tokenizer if tokenizer is not None else (path if _has_tokenizer(path) else None)
    if task is not None and head is None and fresh_only:
        raise SourceError(
            f"{path} is a {task} checkpoint with its own head, pooling and labels: drop {'/'.join(fresh_only)}, or "
            "pass --head NAME --num-labels N as well to replace its head with a fresh one"
        )
    if task is not None and head is None and num_labels is not None:
        raise SourceError(
            f"{path} is a {task} checkpoint with its own head: drop --num-labels to export that head, or pass "
            "--head NAME as well to replace it with a fresh one"
        )
    if task is None or num_labels is not None:
        if head is None and num_labels is None:
            what = f"a {architectures[0]}" if architectures else "a backbone"
            raise SourceError(
                f"{path} is {what} without a task head; pass --head NAME --num-labels N to attach a fresh head "
                "(see 'headreg heads')"
            )
        if head is None:
            raise SourceError(f"--num-labels needs --head NAME: the head to attach to the backbone in {path} "
                              "(see 'headreg heads')")
        if num_labels is None:
            raise SourceError(f"--head {head} needs --num-labels N: how many labels (outputs) the fresh head has")
        kind = "backbone"
        _check_pooling(path, pooling, allow_bin)
    else:
        kind = "transformers"
    return SourcePlan(path, kind, task, tokenizer, head, num_labels, pickled=_weights_format(path, allow_bin),
                      pooling=pooling, id2label=None if labels is None else dict(enumerate(labels)), allow_bin=allow_bin)


def _label_names(id2label: Sequence[str] | Mapping[Any, str] | None, num_labels: int | None) -> list[str] | None:
    """A fresh head's label names in index order; SourceError when they are not names for 0..N-1."""
    if id2label is None:
        return None
    if isinstance(id2label, Mapping):
        try:
            by_index = {int(key): value for key, value in id2label.items()}
        except (TypeError, ValueError):
            raise SourceError(f"id2label keys must be label indices 0..N-1, got {sorted(map(str, id2label))[:5]}") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise SourceError(f"id2label keys must be the label indices 0..{len(by_index) - 1}, got {sorted(by_index)}")
        labels = [by_index[i] for i in range(len(by_index))]
    else:
        labels = list(id2label)
    bad = [label for label in labels if not isinstance(label, str) or not label.strip()]
    if not labels or bad:
        raise SourceError(f"label names must be non-empty strings, got {labels!r}")
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise SourceError(f"label names must differ; {', '.join(map(repr, twice))} given more than once")
    if num_labels is not None and num_labels != len(labels):
        raise SourceError(f"--num-labels {num_labels} but {len(labels)} label names were given; drop --num-labels or "
                          "give one name per label")
    return labels


def _check_pooling(path: Path, pooling: str | None, allow_bin: bool) -> None:
    """A fresh head's pooling: a known name, or the checkpoint's own modules, which must be reproducible."""
    from ..pooling_names import ALIASES, STRATEGIES
    from ..sentence_modules import ModulesError, read_modules

    if pooling is not None:
        if ALIASES.get(pooling, pooling) not in STRATEGIES:
            raise SourceError(f"unknown pooling {pooling!r}; choose one of {', '.join(STRATEGIES)} "
                              f"(or sentence-transformers' {', '.join(ALIASES)})")
        if ALIASES.get(pooling, pooling) != "auto":
            return
    try:
        modules = read_modules(path)
    except ModulesError as exc:
        raise SourceError(str(exc)) from exc
    if modules is not None and modules.pickled_dense and not allow_bin:
        raise SourceError(
            f"the Dense module in {modules.pickled_dense[0]} has its weights only as pytorch_model.bin, a pickle, which "
            "headreg does not load by default; pass --allow-bin to load it with torch.load(weights_only=True)"
        )


def load_source(
    path: str | Path,
    *,
    head: str | None = None,
    num_labels: int | None = None,
    tokenizer: Any = None,
    allow_bin: bool = False,
    pooling: str | None = None,
    id2label: Sequence[str] | Mapping[Any, str] | None = None,
    plan: SourcePlan | None = None,
) -> Source:
    """Load SOURCE as a HeadedModel in eval mode, with where its tokenizer is.

    ``allow_bin=True`` loads a checkpoint that has only ``pytorch_model.bin`` with
    ``torch.load(weights_only=True)`` (tensors only, no arbitrary objects); without it such a checkpoint is
    refused, since headreg never unpickles by default.
    """
    if plan is None:
        plan = inspect_source(path, head=head, num_labels=num_labels, tokenizer=tokenizer, allow_bin=allow_bin,
                              pooling=pooling, id2label=id2label)
    from ..loading import load_model
    from ..model import quiet_transformers

    path = plan.path
    if plan.kind == "headreg":
        return Source(load_model(path), plan.tokenizer, {"path": str(path), "kind": "headreg"})
    # weights_only=True is transformers' default too; said here so it cannot silently change.
    weights = dict(use_safetensors=False, weights_only=True) if plan.pickled else dict(use_safetensors=True)
    if plan.kind == "transformers":
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        from ..interop import from_transformers

        task = plan.task or ""
        auto = AutoModelForTokenClassification if task.endswith("ForTokenClassification") else AutoModelForSequenceClassification
        with quiet_transformers():
            try:
                hf = auto.from_pretrained(path, **weights)
            except (OSError, ValueError) as exc:
                raise SourceError(f"cannot load the {task} checkpoint in {path}: {exc}") from exc
        model = from_transformers(hf, head=plan.head).eval()
        return Source(model, plan.tokenizer, {"path": str(path), "kind": "transformers"})
    from transformers import AutoModel

    from ..model import attach_head

    with quiet_transformers():
        try:
            backbone = AutoModel.from_pretrained(path, **weights)
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot load a backbone from {path}: {exc}") from exc
    if backbone.base_model is not backbone:
        backbone = backbone.base_model
    from ..pooling import authored_pooling
    from ..sentence_modules import max_seq_length

    pooling: Any = plan.pooling or "auto"
    options: dict[str, Any] = {"num_labels": plan.num_labels}
    if plan.id2label is not None:
        options["id2label"] = plan.id2label
    try:
        if pooling == "auto":
            # the checkpoint's own modules, with the Dense weights --allow-bin permits
            pooling = authored_pooling(path, allow_bin=plan.allow_bin) or "auto"
        model = attach_head(backbone.eval(), plan.head, pooling=pooling, **options).eval()
    except HeadConfigError as exc:
        raise SourceError(str(exc)) from exc
    return Source(model, plan.tokenizer, {"path": str(path), "kind": "backbone"}, untrained=True,
                  max_length=max_seq_length(path))


def convert_to_safetensors(source: str | Path, target: str | Path, *, overwrite: bool = False) -> Path:
    """Copy a checkpoint whose weights are ``pytorch_model.bin`` to ``target`` with ``model.safetensors`` instead.

    The .bin is read with ``torch.load(weights_only=True)`` (tensors only); every other file (config,
    tokenizer) is copied as is. ``target`` is written atomically.
    """
    import shutil

    from ..atomic import atomic_directory, is_nonempty

    source, target = Path(source), Path(target)
    if not (source / "pytorch_model.bin").is_file():
        what = "sharded weights (pytorch_model.bin.index.json)" if (source / PICKLED_WEIGHTS[1]).is_file() else "no pytorch_model.bin"
        raise SourceError(f"{source} has {what}; convert handles one pytorch_model.bin (use --allow-bin for the rest)")
    if is_nonempty(target) and not overwrite:
        raise SourceError(f"{target} exists and is not empty; pass --overwrite to replace it")
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors, or an object weights_only refuses to restore
        raise SourceError(f"cannot read {source / 'pytorch_model.bin'} with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SourceError(f"{source / 'pytorch_model.bin'} is not a state dict of tensors")
    # safetensors refuses tensors that share memory (tied embeddings); each gets its own copy.
    state = {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
    with atomic_directory(target, overwrite=overwrite) as staging:
        for item in source.iterdir():
            if item.name not in PICKLED_WEIGHTS and item.is_file():
                shutil.copy2(item, staging / item.name)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    return target
