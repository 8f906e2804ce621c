"""A transformers backbone + pooling + registered heads, with save/load that never pickles.

``MultiHeadModel`` runs N named heads in one pass; ``HeadedModel`` (``attach_head``) is its one-member case,
which keeps the format-1 names: modules ``head`` / ``pooler``, graph outputs ``logits`` / ``pooled_output``.
Building several heads (``attach_heads``), loading them and their collator are in :mod:`headreg.multihead`.

>>> from transformers import AutoModel
>>> backbone = AutoModel.from_pretrained("path/to/encoder")          # doctest: +SKIP
>>> model = attach_head(backbone, "seq_cls", num_labels=3)           # doctest: +SKIP
>>> out = model(input_ids=ids, attention_mask=mask, labels=labels)   # doctest: +SKIP
>>> out.loss, out.logits, out.pooled_output                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import require

require("torch", "torch", "attach_head / load_model")
require("transformers", "torch", "attach_head / load_model")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PreTrainedModel  # noqa: E402
from transformers.utils import ModelOutput  # noqa: E402

from ._version import __version__  # noqa: E402
from .atomic import atomic_directory  # noqa: E402
from .errors import BackboneError, HeadConfigError, HeadregError, LabelError, SaveLoadError  # noqa: E402
from .heads.base import Head, build_config  # noqa: E402
from .pooling import Pooler, PoolingConfig, is_decoder, resolve_pooling  # noqa: E402
from .plugins import builtin_registry  # noqa: E402
from .installed import get_head  # noqa: E402
from .registry import HeadSpec  # noqa: E402
from .files import BACKBONE_DIR, HEAD_WEIGHTS, MODEL_CONFIG  # noqa: E402
from .saved import FORMAT, MEMBER_NAME, MODEL_KIND, is_saved_model  # noqa: E402


@dataclass
class HeadOutput(ModelOutput):
    """What a HeadedModel returns; indexable like a dict or a tuple, as transformers' Trainer expects."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooled_output: torch.Tensor | None = None


def hidden_size_of(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("hidden_size", "d_model", "dim", "n_embd"):
        size = getattr(text, attr, None)
        if isinstance(size, int):
            return size
    raise BackboneError(f"cannot tell the hidden size of a {type(config).__name__}; it has no hidden_size")


class BackboneModel(nn.Module):
    """A transformers backbone and how headreg calls it; :class:`HeadedModel` and ``MultiHeadModel`` build on it."""

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        self._backbone_args = set(inspect.signature(backbone.forward).parameters)
        self._decoder = is_decoder(backbone.config)

    @property
    def config(self):
        """The backbone's transformers config (Trainer and other tools look for ``model.config``)."""
        return self.backbone.config

    @property
    def accepts_token_type_ids(self) -> bool:
        return "token_type_ids" in self._backbone_args and getattr(self.config, "type_vocab_size", 0) > 1

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run the backbone: (last hidden state, attention mask, the backbone's own pooler output or None)."""
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None:
            raise ValueError("pass input_ids (or inputs_embeds)")
        if attention_mask is None:
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        if position_ids is None and self._decoder and "position_ids" in self._backbone_args:
            # Count positions from the first real token so left- and right-padded rows give the same result.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            **kwargs,
        }
        inputs = {k: v for k, v in inputs.items() if v is not None and k in self._backbone_args}
        if "use_cache" in self._backbone_args:
            inputs["use_cache"] = False
        outputs = self.backbone(**inputs, return_dict=True)
        return outputs.last_hidden_state, attention_mask, getattr(outputs, "pooler_output", None)


@dataclass
class Member:
    """One head of a model as export and the bundle see it: its name, module, registry entry, pooling and
    which graph output carries each of its outputs (``logits``, ``pooled_output``, its extras)."""

    name: str
    head: Head
    spec: HeadSpec
    pooling: PoolingConfig
    outputs: dict[str, str]

    @property
    def token_outputs(self) -> set[str]:
        """Graph outputs with a per-token axis (compared on non-padding positions only)."""
        return {self.outputs["logits"]} if self.head.level == "token" else set()


POOLED = "pooled_output"


@dataclass
class MultiHeadOutput(ModelOutput):
    """What a MultiHeadModel returns: the weighted loss and each head's logits and pooled features by head name.

    Dicts of tensors are what transformers' Trainer gathers and concatenates in its prediction loop.
    """

    loss: torch.Tensor | None = None
    logits: dict[str, torch.Tensor] | None = None
    pooled_output: dict[str, torch.Tensor] | None = None


def pooling_key(config: PoolingConfig) -> str:
    """A readable module name for a pooling: ``cls``, ``mean``, ``pooler``, ``cls_tanh`` ..."""
    key = config.strategy
    if config.projection:
        key = f"{key}_{config.activation or 'linear'}{'_norm' if config.norm else ''}"
    return key + ("_dense" if config.dense else "") + ("_normalize" if config.normalize else "")


class MultiHeadModel(BackboneModel):
    """A backbone with named heads. ``forward`` returns :class:`MultiHeadOutput`.

    ``poolers`` holds one pooler per distinct pooling (heads with the same pooling share it, so it is
    computed once per pass); ``heads`` holds the heads by name, in the order they were added.
    """

    multi_head = True

    def __init__(self, backbone: PreTrainedModel):
        super().__init__(backbone)
        self.poolers = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.specs: dict[str, HeadSpec] = {}
        self.head_pooling: dict[str, str] = {}
        self.loss_weights: dict[str, float] = {}

    @property
    def head_names(self) -> list[str]:
        return list(self.heads)

    # --- building -------------------------------------------------------------------------------------------------

    def add_head(
        self,
        name: str,
        head: str,
        *,
        pooling: str | dict | PoolingConfig = "auto",
        loss_weight: float = 1.0,
        **options: Any,
    ) -> "MultiHeadModel":
        """Add the registered head ``head`` under ``name`` (``options``: its config fields); returns the model."""
        spec, module, pooling_config = build_head(self.backbone, head, pooling, options)
        # A fresh head shares the pooler of its pooling (and so its projection, trained jointly) when there is one.
        pooler = next((p for p in self.poolers.values() if p.config == pooling_config), None)
        return self._add(name, module, spec, pooler or Pooler(pooling_config, hidden_size_of(self.backbone.config)),
                         loss_weight)

    def add_model(self, name: str, model: HeadedModel, *, loss_weight: float = 1.0) -> "MultiHeadModel":
        """Add a (fine-tuned) single-head model's head and pooler under ``name``; it must share this backbone."""
        if not isinstance(model, HeadedModel):
            raise TypeError(f"add_model takes a HeadedModel, got {type(model).__name__}")
        if model.backbone is not self.backbone:
            raise HeadConfigError(
                f"head {name!r}: that model has its own backbone; heads joining a model must share its backbone "
                "(attach_heads(model, {...}) starts a multi-head model from a single-head one)"
            )
        return self._add(name, model.head, model.spec, model.pooler, loss_weight)

    def _add(self, name: str, head: Head, spec: HeadSpec, pooler: Pooler, loss_weight: float) -> "MultiHeadModel":
        if not isinstance(name, str) or not MEMBER_NAME.match(name) or name == POOLED:
            raise HeadConfigError(
                f"head name {name!r} must start with a letter and hold only letters, digits, '_' and '-' (at most "
                "64 characters): it names the head's ONNX outputs ('{name}.logits')"
            )
        if name in self.heads:
            raise HeadConfigError(f"this model already has a head named {name!r}; its heads are {self.head_names}")
        weight = float(loss_weight)
        if not weight >= 0:
            raise HeadConfigError(f"loss weight of head {name!r} must be >= 0, got {loss_weight!r}")
        self.head_pooling[name] = self._pooler_key(pooler)
        self.heads[name] = head
        self.specs[name] = spec
        self.loss_weights[name] = weight
        device = next(self.backbone.parameters()).device
        self.to(device)
        head.train(self.backbone.training)
        return self

    def _pooler_key(self, pooler: Pooler) -> str:
        """The key of this pooler or an equal one already here (same config and weights), else a new key.

        A trained pooler with a projection keeps its own weights unless they equal an existing pooler's.
        """
        for key, existing in self.poolers.items():
            if existing is pooler or (existing.config == pooler.config and _same_weights(existing, pooler)):
                return key
        base = pooling_key(pooler.config)
        key, n = base, 2
        while key in self.poolers:
            key, n = f"{base}_{n}", n + 1
        self.poolers[key] = pooler
        return key

    # --- running ----------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> MultiHeadOutput:
        """Every head's logits (and pooled features) by name; ``labels`` by head name give the weighted loss."""
        if labels is not None and not isinstance(labels, Mapping):
            raise LabelError(
                f"a multi-head model takes labels as a dict by head name, e.g. labels={{{self.head_names[0]!r}: y}}; "
                f"got {type(labels).__name__}. Its heads are {self.head_names}."
            )
        unknown = sorted(set(labels or {}) - set(self.heads))
        if unknown:
            raise LabelError(f"labels for unknown head(s) {unknown}; this model's heads are {self.head_names}")
        pooled, logits, mask = self._run(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        loss = None
        for name, target in (labels or {}).items():
            if target is None or _all_ignored(target) or self.loss_weights[name] == 0:
                continue
            term = self.loss_weights[name] * self.heads[name].loss(logits[name], target, mask)
            loss = term if loss is None else loss + term
        if loss is None and labels is not None:
            # Trainer needs a tensor loss even when no head has labels in this batch; zero keeps the graph.
            loss = sum(value.sum() * 0.0 for value in logits.values())
        by_head = {name: pooled[self.head_pooling[name]] for name in self.heads}
        return MultiHeadOutput(loss=loss, logits=logits, pooled_output=by_head)

    def _run(self, *args: Any, **kwargs: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        if not self.heads:
            raise HeadConfigError("this multi-head model has no heads yet; add one with model.add_head(name, head, ...)")
        sequence_output, mask, backbone_pooled = self.encode(*args, **kwargs)
        pooled = {
            key: self.poolers[key](sequence_output, mask, backbone_pooled)
            for key in dict.fromkeys(self.head_pooling[name] for name in self.heads)
        }
        logits = {
            name: head(pooled[self.head_pooling[name]], sequence_output, mask) for name, head in self.heads.items()
        }
        return pooled, logits, mask

    # --- export -----------------------------------------------------------------------------------------------------

    def pooled_output_names(self) -> dict[str, str]:
        """Pooling key -> graph output: ``pooled_output`` for the first pooling, ``pooled_output.<key>`` after."""
        # Order of first use by the heads (not of the ModuleDict), so a saved and reloaded model names them alike.
        keys = list(dict.fromkeys(self.head_pooling[name] for name in self.heads))
        return {key: POOLED if i == 0 else f"{POOLED}.{key}" for i, key in enumerate(keys)}

    def output_name(self, head: str, output: str) -> str:
        """The graph output carrying one head's ``output`` (``logits`` or an extra): ``{head}.{output}``."""
        return f"{head}.{output}"

    def members(self) -> list[Member]:
        pooled_names = self.pooled_output_names()
        members = []
        for name, head in self.heads.items():
            key = self.head_pooling[name]
            outputs = {"logits": self.output_name(name, "logits"), "pooled_output": pooled_names[key]}
            outputs.update({extra: self.output_name(name, extra) for extra in head.export_extras()})
            members.append(Member(name, head, self.specs[name], self.poolers[key].config, outputs))
        return members

    def graph_output_names(self) -> list[str]:
        return list(self.graph_outputs_of(None))

    def graph_outputs(self, input_ids, attention_mask, token_type_ids=None) -> dict[str, torch.Tensor]:
        """The exported graph's outputs by name, in graph order: pooled outputs, then each head's."""
        return self.graph_outputs_of(self._run(input_ids, attention_mask, token_type_ids))

    def graph_outputs_of(self, run: tuple[Any, Any, Any] | None) -> dict[str, Any]:
        """Graph output name -> value from ``_run``'s result (``None``: names only, values None)."""
        pooled, logits = (run[0], run[1]) if run is not None else ({}, {})
        names = self.pooled_output_names()
        outputs = {names[key]: pooled.get(key) for key in names}
        for name, head in self.heads.items():
            outputs[self.output_name(name, "logits")] = logits.get(name)
            outputs.update({self.output_name(name, extra): value for extra, value in head.export_extras().items()})
        return outputs

    # --- save / load ------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False, tokenizer: Any = None) -> Path:
        """Write the backbone (transformers' format), the heads' and poolers' config (json) and weights (safetensors,
        every non-backbone weight); never pickle.

        The directory is written next to its final place and renamed, so a failed save leaves nothing
        behind. An existing non-empty directory is refused unless ``overwrite=True``, and even then only a
        saved headreg model is replaced (never another directory). Pass the ``tokenizer`` to keep it with the
        model (``headreg export`` then finds it).
        """
        from safetensors.torch import save_file

        if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
            raise SaveLoadError(f"tokenizer must be a transformers tokenizer (it is saved with its save_pretrained), "
                                f"got {type(tokenizer).__name__}; load one with AutoTokenizer.from_pretrained(...)")
        target = Path(save_directory)
        with atomic_directory(target, overwrite=overwrite, replaceable=is_saved_model, what=MODEL_KIND) as tmp:
            with quiet_transformers():
                self.backbone.save_pretrained(tmp / BACKBONE_DIR)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
            save_file(state, str(tmp / HEAD_WEIGHTS), metadata={"format": "pt"})
            config = {
                "format": FORMAT,
                "headreg_version": __version__,
                **self._saved_config(),
                "backbone": BACKBONE_DIR,
                "tokenizer_source": None if tokenizer is not None else _local_source(self.backbone),
            }
            (tmp / MODEL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return target

    def _saved_config(self) -> dict[str, Any]:
        """What ``headreg_model.json`` records of the heads and poolers."""
        return {
            "format_version": 2,
            "heads": [
                {
                    "name": name,
                    **_saved_head(self.specs[name], head),
                    "pooling": self.head_pooling[name],
                    "loss_weight": self.loss_weights[name],
                }
                for name, head in self.heads.items()
            ],
            "poolings": {key: pooler.config.as_dict() for key, pooler in self.poolers.items()},
        }


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def _all_ignored(labels: Any) -> bool:
    """Integer labels that are all -100 (a batch where no row is labelled for this head): no loss, not NaN."""
    labels = torch.as_tensor(labels)
    return not torch.is_floating_point(labels) and labels.numel() > 0 and bool((labels == -100).all())



class HeadedModel(MultiHeadModel):
    """A backbone, a pooler and a head: the one-member case of :class:`MultiHeadModel`. ``forward`` returns
    :class:`HeadOutput` (loss, logits, pooled_output) and takes ``labels`` as a tensor.

    What differs from the general case is only naming, kept since format 1: the head and pooler are the modules
    ``head`` and ``pooler`` (their state-dict keys), and the graph outputs are ``logits``, ``pooled_output`` and
    the head's extras, without the head's name.
    """

    multi_head = False

    def __init__(self, backbone: PreTrainedModel, head: Head, pooler: Pooler, spec: HeadSpec):
        BackboneModel.__init__(self, backbone)
        self.pooler = pooler
        self.head = head
        self.spec = spec

    # MultiHeadModel's code reads these; they are views of the two registered modules, so torch registers (and
    # names in the state dict) each once, as ``head`` / ``pooler``, and a replaced ``model.head`` is what runs.
    @property
    def heads(self) -> dict[str, Head]:
        return {self.spec.name: self.head}

    @property
    def poolers(self) -> dict[str, Pooler]:
        return {pooling_key(self.pooler.config): self.pooler}

    @property
    def head_pooling(self) -> dict[str, str]:
        return {self.spec.name: pooling_key(self.pooler.config)}

    @property
    def specs(self) -> dict[str, HeadSpec]:
        return {self.spec.name: self.spec}

    @property
    def loss_weights(self) -> dict[str, float]:
        return {self.spec.name: 1.0}

    @property
    def head_config(self):
        return self.head.config

    @property
    def head_name(self) -> str:
        return self.spec.name

    def _add(self, name: str, *args: Any) -> "MultiHeadModel":
        raise HeadConfigError(f"a HeadedModel has one head; attach_heads(model, {{{name!r}: ...}}) makes a multi-head "
                              "model that keeps this one")

    def output_name(self, head: str, output: str) -> str:
        return output

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> HeadOutput:
        pooled, logits, mask = self._run(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        (logits,), (pooled_output,) = logits.values(), pooled.values()
        loss = self.head.loss(logits, labels, mask) if labels is not None else None
        return HeadOutput(loss=loss, logits=logits, pooled_output=pooled_output)

    def _saved_config(self) -> dict[str, Any]:
        return {
            "format_version": 1,  # the single-head layout is unchanged since version 1: older headreg reads it
            **_saved_head(self.spec, self.head),
            "pooling": self.pooler.config.as_dict(),
        }


def _saved_head(spec: HeadSpec, head: Head) -> dict[str, Any]:
    """A head as ``headreg_model.json`` records it (a format-1 file's top level, each of format 2's ``heads``);
    :func:`installed_head` reads it back."""
    return {"head": spec.name, "plugin": spec.plugin, "plugin_version": spec.version, "head_config": head.config.to_dict()}


def _local_source(backbone: PreTrainedModel) -> str | None:
    source = getattr(backbone, "name_or_path", None) or getattr(backbone.config, "_name_or_path", None)
    return str(Path(source).resolve()) if source and Path(source).is_dir() else None


@contextlib.contextmanager
def quiet_transformers():
    """transformers 5 prints load reports and progress bars on every from_pretrained; keep output clean."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _check_backbone(backbone: Any) -> None:
    if not isinstance(backbone, PreTrainedModel):
        raise BackboneError(
            f"attach_head needs a transformers backbone such as AutoModel.from_pretrained(...), got "
            f"{type(backbone).__module__}.{type(backbone).__name__}"
        )
    if backbone.base_model is not backbone:
        raise BackboneError(
            f"{type(backbone).__name__} already has a task head; pass its base model "
            f"(model.{backbone.base_model_prefix}) to attach a new head, or headreg.from_transformers(model) "
            "to keep its head"
        )


def attach_head(backbone: PreTrainedModel, name: str, *, pooling: str | dict | PoolingConfig = "auto", **options: Any):
    """Attach the registered head ``name`` to an ``AutoModel`` backbone and return a :class:`HeadedModel`.

    ``options`` are the head's config fields (``num_labels``, ``id2label``/``label2id``, ``dropout``,
    ``hidden_layers``, ``activation``, plus head-specific ones). ``pooling`` is one of
    ``auto | cls | pooler | mean | max | mean_sqrt_len | last``; ``auto`` follows the checkpoint: a
    sentence-transformers checkpoint's ``modules.json`` (Pooling, Dense, Normalize) when the backbone was loaded
    from one, else what transformers' own ``*ForSequenceClassification`` does for the architecture.
    """
    _check_backbone(backbone)
    return _attach(backbone, get_head(name), pooling, options)


def _attach(backbone: PreTrainedModel, spec: HeadSpec, pooling: Any, options: dict[str, Any]) -> "HeadedModel":
    spec, head, pooling_config = build_head(backbone, spec, pooling, options)
    model = HeadedModel(backbone, head, Pooler(pooling_config, hidden_size_of(backbone.config)), spec)
    model.to(next(backbone.parameters()).device)
    model.train(backbone.training)
    return model


def build_head(backbone: PreTrainedModel, spec: HeadSpec | str, pooling: Any, options: dict[str, Any]) -> tuple[HeadSpec, Head, PoolingConfig]:
    """The registered head (``spec`` or its name) built from ``options`` for this backbone, and its resolved pooling."""
    if isinstance(spec, str):
        spec = get_head(spec)
    head_cls = spec.load_class()
    if not (isinstance(head_cls, type) and issubclass(head_cls, Head)):
        raise HeadConfigError(f"head {spec.name!r} from {spec.origin!r}: {spec.cls} is not a headreg Head subclass")
    hidden = hidden_size_of(backbone.config)
    with _head_errors(spec, "config"):
        config = build_config(head_cls.config_class, spec.name, dict(options))
    pooling_config = resolve_pooling(pooling, backbone, head_cls.level)
    if pooling_config.dense and pooling_config.dense[0].in_features != hidden:
        raise HeadConfigError(f"the pooling's first Dense layer takes {pooling_config.dense[0].in_features} features, "
                              f"but the backbone's hidden size is {hidden}")
    if head_cls.level != "token":
        hidden = pooling_config.width(hidden)  # a sequence head reads pooled_output, which Dense layers may resize
    with _head_errors(spec, "constructor"):
        head = head_cls(config, hidden)
    return spec, head, pooling_config


@contextlib.contextmanager
def _head_errors(spec: HeadSpec, what: str):
    """A plugin head's own code raising anything becomes an error naming the head and its plugin."""
    try:
        yield
    except HeadregError:
        raise
    except Exception as exc:
        raise HeadConfigError(
            f"head {spec.name!r} from {spec.origin!r}: its {what} raised {type(exc).__name__}: {exc}"
            + ("" if spec.builtin else f". Check the head's options, or report it to the {spec.plugin} authors.")
        ) from exc


def _check_backbone_weights(info: dict[str, Any], where: Path) -> None:
    """Refuse a backbone whose weights do not match its config: the unmatched ones would be random."""
    found = {key: sorted(info.get(key) or ()) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = [
        f"{label}: {', '.join(map(str, keys[:8]))}{f' ... ({len(keys)} in all)' if len(keys) > 8 else ''}"
        for label, keys in (("missing (would be randomly initialised)", found["missing_keys"]),
                            ("unexpected (would be ignored)", found["unexpected_keys"]),
                            ("of the wrong shape", found["mismatched_keys"]))
        if keys
    ]
    if problems:
        raise SaveLoadError(
            f"the backbone weights in {where} do not match its config.json; weights "
            + "; ".join(problems)
            + ". The directory is corrupt or mixes two models: save the model again, or pass strict=False to "
            "load it anyway (the missing weights are then random)."
        )


def load_single_head(directory: Path, saved: dict[str, Any], *, trust_remote_code: bool, strict: bool = True) -> "HeadedModel":
    """Rebuild a HeadedModel from ``headreg_model.json`` (already checked against saved.SAVED_MODEL_SCHEMA) and
    its weights."""
    spec = installed_head(directory, saved)
    backbone = load_backbone(directory, trust_remote_code=trust_remote_code, strict=strict)
    try:
        model = _attach(backbone, spec, saved["pooling"], dict(saved["head_config"]))
    except (HeadConfigError, BackboneError) as exc:
        raise SaveLoadError(f"{directory / MODEL_CONFIG} has options that do not work: {exc}") from exc
    load_head_weights(model, directory, f"head {spec.name!r}")
    return model


def installed_head(directory: Path, entry: Mapping[str, Any]) -> HeadSpec:
    """The installed head a saved model's ``entry`` (``head``, ``plugin``, ``plugin_version``) names."""
    head_name, plugin = entry["head"], entry.get("plugin")
    try:
        # A model saved with a built-in head loads with the built-in, whatever plugins are installed.
        return builtin_registry().get(head_name) if plugin == "headreg" else get_head(head_name)
    except LookupError as exc:
        raise SaveLoadError(
            f"{directory} uses head {head_name!r} from {plugin} {entry.get('plugin_version')}, "
            f"which is not installed here. Install that plugin (pip install {plugin})."
        ) from exc


def load_backbone(directory: Path, *, trust_remote_code: bool, strict: bool) -> PreTrainedModel:
    from transformers import AutoConfig, AutoModel

    with quiet_transformers():
        try:
            backbone_config = AutoConfig.from_pretrained(directory / BACKBONE_DIR, trust_remote_code=trust_remote_code)
            backbone, info = AutoModel.from_pretrained(
                directory / BACKBONE_DIR,
                config=backbone_config,
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                output_loading_info=True,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise SaveLoadError(f"cannot load the backbone in {directory / BACKBONE_DIR}: {exc}") from exc
    if strict:
        _check_backbone_weights(info, directory / BACKBONE_DIR)
    try:
        _check_backbone(backbone)
    except BackboneError as exc:
        raise SaveLoadError(f"{directory / MODEL_CONFIG} has options that do not work: {exc}") from exc
    return backbone


def load_head_weights(model: BackboneModel, directory: Path, what: str) -> None:
    """Load every non-backbone weight from ``head.safetensors``; the names must match exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(directory / HEAD_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise SaveLoadError(f"{directory / HEAD_WEIGHTS} is corrupt: {exc}") from exc
    expected = {k for k in model.state_dict() if not k.startswith("backbone.")}
    if set(state) != expected:
        raise SaveLoadError(
            f"{directory / HEAD_WEIGHTS} does not match {what}: missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)}"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise SaveLoadError(f"{directory / HEAD_WEIGHTS} does not fit {what}: {exc}") from exc
