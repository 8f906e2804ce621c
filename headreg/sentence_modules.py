"""A sentence-transformers checkpoint's own modules, read as its authors meant them.

A sentence-transformers checkpoint says in ``modules.json`` how its embedding is made: ``Transformer`` (the
backbone) -> ``Pooling`` (``1_Pooling/config.json``: cls | mean | max | mean_sqrt_len | lasttoken) ->
``Dense`` (a linear layer + activation, weights beside its ``config.json``) -> ``Normalize`` (L2). headreg
rebuilds exactly that chain as the pooling of ``pooled_output`` (:class:`headreg.pooling.PoolingConfig`), so
``Predictor.embed`` gives what ``SentenceTransformer.encode`` gives. Nothing the files name is imported: module
types and activations are matched against the known names below, and anything else is refused with a
message that says so (``--pooling NAME`` / ``pooling=`` chooses a pooling yourself).

:func:`read_modules` reads the json files only (no torch), so ``headreg export`` reports a problem before
loading anything; :func:`dense_weights` loads the Dense weights (safetensors; a ``pytorch_model.bin``
only with ``allow_bin=True``, through ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HeadConfigError

MODULES_FILE = "modules.json"
MAX_JSON_BYTES = 1 << 20
_PACKAGE = "sentence_transformers."
# Pooling's mode -> headreg's strategy (None: not reproduced). sentence-transformers 6 writes "pooling_mode";
# earlier versions one flag per mode ("pooling_mode_mean_tokens": true), which mean the same names.
_MODES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len", "lasttoken": "last",
          "weightedmean": None}
_LEGACY_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_EMBEDDING = "sentence_embedding"  # the feature Dense and Normalize must read and write to act on the embedding
# Dense's activation_function (a class path it would import) -> an ACT2FN name; None: identity
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": None,
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.SiLU": "silu",
}
SAFE_DENSE_WEIGHTS = "model.safetensors"
PICKLED_DENSE_WEIGHTS = "pytorch_model.bin"


class ModulesError(HeadConfigError):
    """A sentence-transformers checkpoint whose modules headreg cannot reproduce exactly."""


@dataclass(frozen=True)
class Modules:
    """What ``modules.json`` says, checked: the pooling strategy, Dense layers (their directories) and Normalize."""

    directory: Path
    strategy: str
    dense: tuple[tuple[Path, dict[str, Any]], ...]
    normalize: bool

    @property
    def pickled_dense(self) -> list[Path]:
        """Dense directories whose weights exist only as a pickle (pytorch_model.bin)."""
        return [path for path, _ in self.dense if not (path / SAFE_DENSE_WEIGHTS).is_file()]


def checkpoint_directory(backbone: Any) -> Path | None:
    """The local directory a transformers backbone was loaded from, when there is one."""
    source = getattr(backbone, "name_or_path", None) or getattr(getattr(backbone, "config", None), "_name_or_path", None)
    if not source:
        return None
    path = Path(source)
    return path if path.is_dir() else None


def _json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ModulesError(f"{path} is larger than {MAX_JSON_BYTES} bytes; it is not a sentence-transformers config")
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModulesError(f"{path} is not readable JSON: {exc}") from exc


def _inside(directory: Path, relative: Any, what: str) -> Path:
    if not isinstance(relative, str):
        raise ModulesError(f"{directory / MODULES_FILE}: the {what} module's path is {relative!r}, not a string")
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise ModulesError(f"{directory / MODULES_FILE}: the {what} module's path {relative!r} leaves the checkpoint")
    return path


def read_modules(directory: str | Path) -> Modules | None:
    """The checked modules of the sentence-transformers checkpoint in ``directory``; None when it has no modules.json.

    ModulesError when the chain is not Transformer -> Pooling -> Dense* -> Normalize? or a module's config is
    not one headreg reproduces exactly (several pooling modes at once, weighted mean, an unknown activation).
    """
    directory = Path(directory)
    if not (directory / MODULES_FILE).is_file():
        return None
    entries = _json(directory / MODULES_FILE)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ModulesError(f"{directory / MODULES_FILE} is not a list of modules")
    # "sentence_transformers.models.Pooling" (<= 5) or "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
    kinds = [str(entry.get("type", "")).rsplit(".", 1)[-1] if str(entry.get("type", "")).startswith(_PACKAGE)
             else str(entry.get("type", "")) for entry in entries]
    hint = "; pass --pooling NAME (Python: pooling=) to choose a pooling yourself"
    if kinds[:2] != ["Transformer", "Pooling"]:
        raise ModulesError(f"{directory / MODULES_FILE} lists {' -> '.join(kinds) or 'no modules'}; headreg reproduces "
                           f"Transformer -> Pooling -> Dense... -> Normalize{hint}")
    if _inside(directory, entries[0].get("path", ""), "Transformer") != directory.resolve():
        raise ModulesError(f"{directory / MODULES_FILE}: the Transformer module is in {entries[0].get('path')!r}; "
                           f"export that directory instead")
    prompts = _json(directory / "config_sentence_transformers.json") if (directory / "config_sentence_transformers.json").is_file() else {}
    if isinstance(prompts, dict) and prompts.get("default_prompt_name"):
        raise ModulesError(f"{directory}/config_sentence_transformers.json prepends the prompt "
                           f"{prompts['default_prompt_name']!r} to every text, which headreg does not do{hint}")
    pooling_path = _inside(directory, entries[1].get("path"), "Pooling") / "config.json"
    pooling = _json(pooling_path)
    modes = pooling.get("pooling_mode") if isinstance(pooling, dict) else None
    if modes is None and isinstance(pooling, dict):
        modes = [mode for flag, mode in _LEGACY_MODES.items() if pooling.get(flag)]
    modes = [modes] if isinstance(modes, str) else list(modes or [])
    if len(modes) != 1 or _MODES.get(modes[0]) is None:
        raise ModulesError(f"{pooling_path} pools with {' + '.join(map(str, modes)) or 'no mode'}; headreg reproduces "
                           f"exactly one of cls, mean, max, mean_sqrt_len_tokens, lasttoken{hint}")
    dense: list[tuple[Path, dict[str, Any]]] = []
    normalize = False
    for kind, entry in zip(kinds[2:], entries[2:]):
        if normalize or kind not in ("Dense", "Normalize"):
            raise ModulesError(f"{directory / MODULES_FILE} has {kind!r} after "
                               f"{'Normalize' if normalize else 'Pooling'}; headreg reproduces Transformer -> "
                               f"Pooling -> Dense... -> Normalize{hint}")
        path = _inside(directory, entry.get("path"), kind)
        config = _json(path / "config.json") if (path / "config.json").is_file() else {}
        acts_on = {config.get("module_input_name", _EMBEDDING), config.get("module_output_name", _EMBEDDING)}
        if acts_on != {_EMBEDDING} or config.get("use_residual"):
            raise ModulesError(f"{path}/config.json: this {kind} reads {config.get('module_input_name')!r}"
                               f"{' with a residual' if config.get('use_residual') else ''}; headreg reproduces "
                               f"{kind} on the sentence embedding only{hint}")
        if kind == "Normalize":
            normalize = True
            continue
        activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if activation not in _ACTIVATIONS:
            raise ModulesError(f"{path}/config.json: activation {activation!r} is not one headreg knows "
                               f"({', '.join(_ACTIVATIONS)}); it imports no class a file names{hint}")
        sizes = (config.get("in_features"), config.get("out_features"))
        if not all(isinstance(n, int) and n > 0 for n in sizes):
            raise ModulesError(f"{path}/config.json: in_features/out_features are {sizes}, not positive integers")
        if not (path / SAFE_DENSE_WEIGHTS).is_file() and not (path / PICKLED_DENSE_WEIGHTS).is_file():
            raise ModulesError(f"{path} has no weights ({SAFE_DENSE_WEIGHTS})")
        dense.append((path, {"in_features": sizes[0], "out_features": sizes[1], "bias": bool(config.get("bias", True)),
                             "activation": _ACTIVATIONS[activation]}))
    return Modules(directory, _MODES[modes[0]], tuple(dense), normalize)


def dense_weights(modules: Modules, *, allow_bin: bool = False) -> dict[str, Any]:
    """The Dense modules' weights, keyed ``"{index}.weight"`` / ``"{index}.bias"`` (what PoolingConfig holds).

    A Dense saved only as ``pytorch_model.bin`` is loaded with ``torch.load(weights_only=True)`` when
    ``allow_bin``; otherwise ModulesError, since headreg never unpickles by default.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights: dict[str, Any] = {}
    for index, (path, layer) in enumerate(modules.dense):
        if (path / SAFE_DENSE_WEIGHTS).is_file():
            try:
                state = load_file(str(path / SAFE_DENSE_WEIGHTS))
            except (SafetensorError, OSError) as exc:
                raise ModulesError(f"{path / SAFE_DENSE_WEIGHTS} is corrupt: {exc}") from exc
        elif allow_bin:
            try:
                state = torch.load(path / PICKLED_DENSE_WEIGHTS, map_location="cpu", weights_only=True)
            except Exception as exc:  # pickle and zip errors, or an object weights_only refuses to restore
                raise ModulesError(f"cannot read {path / PICKLED_DENSE_WEIGHTS} with torch.load(weights_only=True): "
                                   f"{exc}") from exc
        else:
            raise ModulesError(
                f"the Dense module in {path} has its weights only as {PICKLED_DENSE_WEIGHTS}, a pickle, which headreg "
                "does not load by default; pass --allow-bin (Python: allow_bin=True) to load it with "
                "torch.load(weights_only=True)"
            )
        want = {"linear.weight", "linear.bias"} if layer["bias"] else {"linear.weight"}
        if not isinstance(state, dict) or set(state) != want:
            raise ModulesError(f"the Dense weights in {path} are {sorted(state) if isinstance(state, dict) else state!r}; "
                               f"expected {sorted(want)}")
        shape = tuple(state["linear.weight"].shape)
        if shape != (layer["out_features"], layer["in_features"]):
            raise ModulesError(f"the Dense weight in {path} has shape {shape}; its config.json says "
                               f"{(layer['out_features'], layer['in_features'])}")
        weights.update({f"{index}.{name.removeprefix('linear.')}": tensor for name, tensor in state.items()})
    return weights


def max_seq_length(directory: str | Path) -> int | None:
    """The longest input, in tokens, a sentence-transformers checkpoint embeds; None for other checkpoints.

    ``max_seq_length`` of ``sentence_bert_config.json`` (sentence-transformers <= 5), else the tokenizer's
    ``model_max_length`` (where sentence-transformers 6 keeps it).
    """
    directory = Path(directory)
    if not (directory / MODULES_FILE).is_file():
        return None
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        config = _json(directory / name) if (directory / name).is_file() else None
        value = config.get(key) if isinstance(config, dict) else None
        # transformers writes a huge model_max_length (1e30) where a tokenizer has no limit
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 20:
            return value
    return None
