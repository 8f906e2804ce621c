"""What every head shares: a config dataclass that is its save format, and a small MLP body.

A head declares its options once, as a dataclass (``config_class``); ``save_pretrained``/``load_model``
write and read exactly those fields, so no head writes its own IO.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..errors import HeadConfigError, LabelError

# A bundle's manifest names every label (several times, for its heads and outputs) and is capped at 64 MB.
MAX_NUM_LABELS = 100_000


@dataclass
class HeadConfig:
    """Options every head understands. Subclass to add fields; every field is saved and restored."""

    num_labels: int = 2
    id2label: dict[int, str] | None = None
    dropout: float = 0.1
    hidden_layers: list[int] = field(default_factory=list)
    activation: str = "gelu"

    def __post_init__(self) -> None:
        # A saved config is untrusted JSON: a field of the wrong type is named, never a bare int() error.
        if self.id2label is not None:
            # JSON turns int keys into strings; accept a list too.
            if not isinstance(self.id2label, (list, tuple, dict)):
                raise HeadConfigError(f"id2label must map label ids to names, got {self.id2label!r}")
            items = enumerate(self.id2label) if isinstance(self.id2label, (list, tuple)) else self.id2label.items()
            try:
                self.id2label = {int(k): str(v) for k, v in items}
            except (TypeError, ValueError) as exc:
                raise HeadConfigError(f"id2label keys must be label ids (integers), got {self.id2label!r}") from exc
        if not isinstance(self.hidden_layers, (list, tuple)):  # a string would be read digit by digit
            raise HeadConfigError(f"hidden_layers must be a list of layer sizes (integers), got {self.hidden_layers!r}")
        try:
            self.hidden_layers = [int(size) for size in self.hidden_layers]
        except (TypeError, ValueError) as exc:
            raise HeadConfigError(
                f"hidden_layers must be a list of layer sizes (integers), got {self.hidden_layers!r}"
            ) from exc

    @property
    def label2id(self) -> dict[str, int]:
        return {label: idx for idx, label in self.labels().items()}

    def labels(self) -> dict[int, str]:
        return self.id2label if self.id2label is not None else {i: f"LABEL_{i}" for i in range(self.num_labels)}

    def validate(self) -> None:
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise HeadConfigError(f"num_labels must be an integer >= 1, got {self.num_labels!r}")
        if self.num_labels > MAX_NUM_LABELS:
            raise HeadConfigError(f"num_labels={self.num_labels} is more than the {MAX_NUM_LABELS} labels a head may "
                                  "have (a bundle's manifest lists every label)")
        if self.id2label is not None:
            if sorted(self.id2label) != list(range(self.num_labels)):
                raise HeadConfigError(
                    f"id2label has {len(self.id2label)} entries with ids {sorted(self.id2label)}, but num_labels="
                    f"{self.num_labels} needs exactly the ids 0..{self.num_labels - 1}"
                )
            if len(set(self.id2label.values())) != len(self.id2label):
                raise HeadConfigError(f"id2label has duplicate label names: {self.id2label}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise HeadConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACT2FN:
            raise HeadConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(sorted(ACT2FN))}")
        if any(size < 1 for size in self.hidden_layers):
            raise HeadConfigError(f"hidden_layers sizes must be >= 1, got {self.hidden_layers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_config(config_class: type[HeadConfig], head_name: str, options: dict[str, Any]) -> HeadConfig:
    """Build and validate a head config, turning unknown options into an error that lists the known ones."""
    if "label2id" in options:
        label2id = options.pop("label2id")
        if options.get("id2label") is None and label2id is not None:
            options["id2label"] = {int(i): label for label, i in label2id.items()}
    if options.get("id2label") is not None and "num_labels" not in options:
        options["num_labels"] = len(options["id2label"])
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise HeadConfigError(
            f"head {head_name!r} has no option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(known))}"
        )
    config = config_class(**options)
    config.validate()
    return config


class MLP(nn.Module):
    """dropout -> [linear -> activation -> dropout]* -> linear: the body most heads need."""

    def __init__(self, in_features: int, out_features: int, config: HeadConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(config.dropout)]
        width = in_features
        for size in config.hidden_layers:
            layers += [nn.Linear(width, size), ACT2FN[config.activation], nn.Dropout(config.dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(features))


class Head(nn.Module):
    """Base class of heads. A head maps pooled / per-token features to logits and knows its loss.

    Subclasses set ``config_class`` and ``level`` ("sequence" or "token") and implement ``forward`` and
    ``loss``. ``export_extras`` returns constant tensors the ONNX graph should expose beside
    ``logits`` and ``pooled_output`` (a CRF's transitions, say).
    """

    config_class: ClassVar[type[HeadConfig]] = HeadConfig
    level: ClassVar[str] = "sequence"
    problem_type: ClassVar[str] = "custom"

    def __init__(self, config: HeadConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size

    def forward(
        self, pooled_output: torch.Tensor, sequence_output: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def export_extras(self) -> dict[str, torch.Tensor]:
        return {}

    def manifest(self) -> dict[str, Any]:
        """What the runtime's postprocess needs, stored in the bundle manifest."""
        return {"problem_type": self.problem_type, "id2label": self.config.labels()}


def expect_labels(
    head: str, labels: Any, *, shape: tuple[int, ...], integer: bool, hint: str = ""
) -> torch.Tensor:
    """Check labels' dtype and shape and say what was expected when they do not fit."""
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    kind = "integer class ids" if integer else "floats"
    is_int = not torch.is_floating_point(labels) and not torch.is_complex(labels) and labels.dtype != torch.bool
    if integer and not is_int:
        raise LabelError(
            f"{head} expects labels as {kind} of shape {tuple(shape)}, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}.{hint}"
        )
    if tuple(labels.shape) != tuple(shape):
        raise LabelError(
            f"{head} expects labels as {kind} of shape {tuple(shape)}, got shape {tuple(labels.shape)}.{hint}"
        )
    return labels


def check_class_range(head: str, labels: torch.Tensor, num_labels: int, ignore_index: int = -100) -> None:
    valid = labels[labels != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_labels):
        raise LabelError(
            f"{head} labels must be class ids in [0, {num_labels}) (or {ignore_index} to ignore), "
            f"got values from {int(valid.min())} to {int(valid.max())}"
        )


class PooledHead(Head):
    """A sequence head: an :class:`MLP` from ``pooled_output`` to ``num_labels`` outputs."""

    level: ClassVar[str] = "sequence"

    def __init__(self, config: HeadConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        self.classifier = MLP(hidden_size, config.num_labels, config)

    def forward(self, pooled_output, sequence_output, attention_mask):
        return self.classifier(pooled_output)

