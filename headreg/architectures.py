"""The architecture matrix: every text ``model_type`` of the installed transformers, a tiny random config of
each, and the round trip every one must survive (attach -> export -> verify -> predict).

Which model types: those transformers gives a sequence-classification, token-classification, causal-LM or
masked-LM model and an ``AutoModel`` backbone, whose config is a plain text config (not a composite of
vision/audio/text sub-models, not an encoder-decoder). A type is in the matrix when its tiny config runs in
PyTorch on ``input_ids`` + ``attention_mask`` alone; :func:`probe` says so or why not.

Tiny configs are derived, not listed: :func:`tiny_config` shrinks whichever size fields the config class
has (hidden 32, 2 layers, 4 heads) to MiniLM's WordPiece vocabulary, so MiniLM's tokenizer serves every
architecture; :data:`FIXES` holds only what a config's own validation demands beyond that (each with why).

Used by tests/test_architectures.py (the matrix; the whole of it is marked slow) and
benchmarks/architectures.py (regenerates the table in docs/architectures.md).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

VOCAB_SIZE = 30522  # MiniLM's WordPiece vocabulary (headreg.testing.minilm_path())
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 32, 2, 4, 2, 8, 64
MAX_POSITIONS = 128

# Size fields by every name the config classes use for them; only the ones a class has are set.
_SIZES: dict[str, Any] = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "embedding_size", "emb_size"), HIDDEN),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers"), LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_heads"), HEADS),
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "hidden_dim", "d_ff", "ffn_hidden_size"), FFN),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size"), HIDDEN),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts"), 4),
    "num_experts_per_tok": 2,
    "vocab_size": VOCAB_SIZE,
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx"), MAX_POSITIONS),
    # MiniLM's special tokens: [PAD] 0, [CLS] 101, [SEP] 102, [MASK] 103
    "pad_token_id": 0,
    **dict.fromkeys(("bos_token_id", "cls_token_id"), 101),
    **dict.fromkeys(("eos_token_id", "sep_token_id"), 102),
    "mask_token_id": 103,
}

# What a config's validation needs beyond the shared sizes, per model type, and why.
FIXES: dict[str, dict[str, Any]] = {
    # GPT-Neo lists one attention type per layer
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 16},
    # the rotary part of a head cannot exceed the head (8)
    "gptj": {"rotary_dim": 4},
    "codegen": {"rotary_dim": 4},
    # Falcon derives head_dim from hidden size and heads (read-only)
    "falcon": {"head_dim": None},
    # XLNet has no position table
    "xlnet": {"max_position_embeddings": None, "n_positions": None},
    # ESM-C has no grouped-query attention
    "esmc": {"num_key_value_heads": HEADS},
    # Funnel's depth is its blocks
    "funnel": {"num_hidden_layers": None, "block_sizes": [1, 1], "num_decoder_layers": 1},
    # Longformer's sliding window must be even and is what a short text sees
    "longformer": {"attention_window": 8},
    # Mamba-2 mixers (hybrids): their own head count, head and state sizes and scan chunk, none of them shared
    # with attention's names; at the defaults one chunk's segment sums alone are 800 MB
    "falcon_h1": {"mamba_n_heads": 4, "mamba_d_head": 8, "mamba_d_ssm": 32, "mamba_d_state": 16,
                  "mamba_chunk_size": 16},
    "nemotron_h": {"mamba_num_heads": 4, "mamba_head_dim": 8, "ssm_state_size": 16, "n_groups": 1, "chunk_size": 16},
    # multi-head latent attention: ranks and the rope/nope split of a head
    **dict.fromkeys(("deepseek_v2", "deepseek_v3", "minicpm3", "mistral4", "axk1", "axk2"), {
        "kv_lora_rank": 16, "q_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
        "qk_head_dim": 16, "head_dim": 8, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    }),
}


@contextlib.contextmanager
def _quiet():
    """transformers warns about token ids, rope scaling and fallbacks for random configs; none of it matters here."""
    from .model import quiet_transformers

    with quiet_transformers(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# candidate_model_types() of transformers 5.25, kept here because computing it imports every config module (about
# a minute on a busy machine): the matrix test parametrizes over this, a slow test checks it is still current.
MODEL_TYPES = (
    "afmoe", "albert", "apertus", "apertus1p5_text", "arcee", "aria_text", "axk1", "axk2", "bailing_hybrid",
    "bamba", "beam", "bert", "bert-generation", "big_bird", "biogpt", "bitnet", "bloom", "bros", "camembert",
    "canine", "codegen", "cohere", "cohere2", "cohere2_moe", "cohere_compass_text", "convbert", "cpmant", "ctrl",
    "cwm", "data2vec-text", "dbrx", "deberta", "deberta-v2", "deepseek_v2", "deepseek_v3", "deepseek_v32",
    "deepseek_v4", "diffllama", "distilbert", "doge", "dory", "dots1", "dots3_note_text", "electra", "ergo",
    "ernie", "ernie4_5", "ernie4_5_moe", "esm", "esmc", "eurobert", "exaone", "exaone4", "exaone_moe", "falcon",
    "falcon_h1", "falcon_mamba", "flaubert", "flex_olmo", "flint", "fnet", "funnel", "gemma", "gemma2",
    "gemma3_text", "gemma3n_text", "gemma4_text", "gemma4_unified_text", "glm", "glm4", "glm4_moe", "glm4_moe_lite",
    "glm_moe_dsa", "gpt-sw3", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gpt_neox_japanese", "gpt_oss", "gptj",
    "granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared", "gte",
    "helium", "hrm_text", "hunyuan_v1_dense", "hunyuan_v1_moe", "hy_v3", "hy_v4", "hyperclovax", "ibert",
    "inkling2_loop_text", "inkling2_text", "inkling_text", "internlm3", "iquestcoder", "jais2", "jamba", "jetmoe",
    "jina_embeddings_v3", "kimi_linear", "kolibri1", "kolibri1_1", "laguna", "lara_mini", "layoutlm", "layoutlmv2",
    "layoutlmv3", "lfm2", "lfm2_moe", "lfm3", "lilt", "llama", "llama4_text", "longcat_flash", "longformer", "luke",
    "mamba", "mamba2", "markuplm", "megatron-bert", "mellum", "mimo_v2_flash", "minicpm3", "minicpm5_moe",
    "minimax", "minimax_m2", "minimax_m3_vl_text", "ministral", "ministral3", "mistral", "mistral4", "mixtral",
    "mobilebert", "modernbert", "modernbert-decoder", "mpnet", "mpt", "mra", "nanochat", "nemotron", "nemotron_h",
    "neomme", "nomic_bert", "nystromformer", "olmo", "olmo2", "olmo3", "olmo_hybrid", "olmoe", "openai-gpt",
    "openai_privacy_filter", "opt", "param2moe", "perceiver", "persimmon", "phi", "phi3", "phimoe", "qwen2",
    "qwen2_moe", "qwen3", "qwen3_5_moe_text", "qwen3_5_text", "qwen3_moe", "qwen3_next", "qwen4_exp_text",
    "recurrent_gemma", "reformer", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "rwkv",
    "sarvam_mla", "sarvam_moe", "seed_oss", "smollm3", "solar_open", "squeezebert", "stablelm", "starcoder2",
    "tapas", "ultrabert", "vaultgemma", "xglm", "xlm", "xlm-roberta", "xlm-roberta-xl", "xlnet", "xlstm", "xmod",
    "yoso", "youtu", "zamba", "zamba2", "zaya",
)
# A config with a sub-config named like one of these wraps another model or modality (Gemma 3's vision tower,
# T5Gemma's encoder); ESM's folding trunk and DBRX's / MPT's attention and FFN settings are parts of a text model.
_OTHER_MODALITY = ("text", "vision", "audio", "encoder", "decoder", "vq", "patcher")


@functools.lru_cache(maxsize=1)
def candidate_model_types() -> tuple[str, ...]:
    """Text model types of the installed transformers (see the module docstring), sorted."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto import modeling_auto as auto

    tasks = (auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
             auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    found = []
    for model_type in sorted(set().union(*tasks) & set(auto.MODEL_MAPPING_NAMES)):
        config_class = CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None
        if config_class is None or any(part in name for name in getattr(config_class, "sub_configs", None) or ()
                                       for part in _OTHER_MODALITY):
            continue
        if getattr(config_class, "is_encoder_decoder", False):  # the class default: instances cost seconds each
            continue
        found.append(model_type)
    return tuple(found)


def tiny_config(model_type: str, **overrides: Any):
    """A transformers config of ``model_type`` with every size field it has shrunk (see module docstring)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    config_class = CONFIG_MAPPING[model_type]
    params = set(inspect.signature(config_class.__init__).parameters)
    with _quiet():
        try:
            defaults = config_class()
        except Exception:
            defaults = None
    known = lambda name: name in params or (defaults is not None and hasattr(defaults, name))  # noqa: E731
    values = {name: value for name, value in _SIZES.items() if known(name)}
    values.update(FIXES.get(model_type, {}))
    values.update(overrides)
    values = {name: value for name, value in values.items() if value is not None}
    with _quiet():
        return AutoConfig.for_model(model_type, **values)


def tiny_backbone(model_type: str, seed: int = 0, **overrides: Any):
    """A tiny random ``AutoModel`` of ``model_type`` (seeded, eval mode)."""
    import torch
    from transformers import AutoModel

    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    with _quiet():
        model = AutoModel.from_config(config)
    if model_type == "xmod":  # X-MOD routes through a language adapter and has no default language
        model.set_default_language(config.languages[0])
    # Some initialisations leave a matrix at zero (AFMoE's router): every expert then ties, and which of the tied
    # experts a top-k picks is the kernel's choice, not the model's. A trained model has no such ties.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


@dataclass
class Probe:
    model_type: str
    runs: bool
    reason: str = ""
    backbone: str = ""
    parameters: int = 0


# Anything larger is a config the shared sizes did not reach (a composite, an unusual field): not tiny.
MAX_TINY_PARAMETERS = 20_000_000


@functools.lru_cache(maxsize=None)
def probe(model_type: str) -> Probe:
    """Whether the tiny ``model_type`` runs in PyTorch on input_ids + attention_mask, or why not."""
    import torch

    try:
        config = tiny_config(model_type)
        with torch.device("meta"), _quiet():
            from transformers import AutoModel

            count = sum(p.numel() for p in AutoModel.from_config(config).parameters())
        if count > MAX_TINY_PARAMETERS:
            return Probe(model_type, False, f"tiny config still has {count:,} parameters", parameters=count)
        backbone = tiny_backbone(model_type)
        ids = torch.randint(1000, 2000, (2, 9))
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        with torch.no_grad(), _quiet():
            out = backbone(input_ids=ids, attention_mask=mask)
        if getattr(out, "last_hidden_state", None) is None:
            return Probe(model_type, False, "the backbone returns no last_hidden_state")
        return Probe(model_type, True, backbone=type(backbone).__name__, parameters=count)
    except Exception as exc:  # noqa: BLE001 - the probe reports whatever stops an architecture
        return Probe(model_type, False, f"{type(exc).__name__}: {_first_line(exc)}")


def result_rows(probe: Probe, results: dict[str, "Result"], heads: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON row per head for the table in docs/architectures.md (benchmarks/architectures.py reads them)."""
    if not probe.runs:
        return [{"model_type": probe.model_type, "head": head, "status": "not in matrix", "reason": probe.reason}
                for head in heads]
    return [dict(vars(results[head]), backbone=probe.backbone) for head in heads]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


# --- the round trip ---------------------------------------------------------------------------------------------

HEAD_OPTIONS = {
    "seq_cls": {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}},
    "token_cls": {"num_labels": 5, "id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
}
# Mixed lengths in one call (so rows of different lengths share batches), an empty text, non-ASCII, and one
# longer than a 128-token window (window mode then runs several windows).
TEXTS = (
    "Berlin is the capital of Germany.",
    "ok",
    "",
    "¿Dónde está la biblioteca? Ça va très bien, merci!",
    "Apple announced new MacBook Pro models in Cupertino on Tuesday, starting at $1,999.",
    " ".join(["The committee postponed the vote until next Thursday after a long debate."] * 14),
)


@dataclass
class Result:
    """One architecture x head of the matrix."""

    model_type: str
    head: str
    status: str  # "served" | "refused" | "failed"
    exporter: str = ""
    reason: str = ""
    batch_padding: bool = True
    max_length: int | None = None
    seconds: float = 0.0

    @property
    def served(self) -> bool:
        return self.status == "served"


def _head_labels(model: Any) -> dict[str, dict[int, str]]:
    """Each head's labels by head name (a HeadedModel's one head is named by its head type)."""
    heads = getattr(model, "heads", None)
    if heads is not None:
        return {name: head.config.labels() for name, head in heads.items()}
    return {model.spec.name: model.head.config.labels()}


def torch_labels(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, list[Any]]:
    """PyTorch's argmax labels per head, each text run alone (truncated like the runtime): what every front door
    must give."""
    import torch

    labels = _head_labels(model)
    found: dict[str, list[Any]] = {name: [] for name in labels}
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        feed = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if model.accepts_token_type_ids:
            feed["token_type_ids"] = encoded["token_type_ids"]
        with torch.inference_mode():
            logits = model(**feed).logits
        for name, head_logits in (logits if isinstance(logits, dict) else {next(iter(labels)): logits}).items():
            row, names = head_logits[0], labels[name]
            found[name].append([names[int(i)] for i in row.argmax(-1)] if row.dim() == 2 else names[int(row.argmax())])
    return found


def runtime_labels(predictor: Any, texts: Sequence[str], heads: Sequence[str], **options: Any) -> dict[str, list[Any]]:
    """The labels a Predictor gives per head: sequence heads the label, token heads ``{token index: label}``."""
    rows = predictor.predict(list(texts), **options)
    by_head = {name: [row[name] for row in rows] for name in heads} if predictor.multi_head else {heads[0]: rows}
    return {name: [{token["index"]: token["label"] for token in row["tokens"]} if "tokens" in row else row["label"]
                   for row in results] for name, results in by_head.items()}


def disagreement(got: Sequence[Any], want: Sequence[Any]) -> str | None:
    """The first text whose runtime labels differ from PyTorch's (token heads: on the tokens the runtime reports)."""
    for index, (mine, theirs) in enumerate(zip(got, want)):
        if isinstance(mine, dict):
            if not mine and len(theirs) > 2:
                return f"text {index}: no tokens reported"
            theirs = {i: theirs[i] if i < len(theirs) else None for i in mine}
        if mine != theirs:
            return f"text {index} labelled {mine!r}, PyTorch {theirs!r}"
    return None if len(got) == len(want) else f"{len(got)} results for {len(want)} texts"


def padding_sides_disagree(predictor: Any, texts: Sequence[str], tolerance: float = 1e-4) -> str | None:
    """A decoder bundle is served left-padded; its graph must give each row the same outputs right-padded too
    (position ids and the last-token pooling are computed from the attention mask, not from the layout)."""
    import numpy as np

    from .runtime.engine import Row

    rows = [Row(index, encoding) for index, encoding in enumerate(predictor.encode(list(texts)))]
    left, right = (predictor.engine.with_layout(padding_side=side).run_rows(rows) for side in ("left", "right"))
    for index, (a, b) in enumerate(zip(left, right)):
        for name, value in a.items():
            diff = float(np.abs(value - b[name]).max()) if np.size(value) else 0.0
            if diff > tolerance:
                return f"{name} of text {index} moves by {diff:.2g} between left and right padding"
    return None


def round_trip_heads(model_type: str, heads: Sequence[str], workdir: str | Path, *, tokenizer: Any = None,
                     texts: Sequence[str] = TEXTS, exporter: str = "auto") -> dict[str, Result]:
    """Attach ``heads`` to the tiny ``model_type`` -> export (verified) -> verify_bundle -> predict in truncate
    and window mode, mixed lengths in one call; labels must equal PyTorch's argmax for each text alone.

    One head is a HeadedModel and its bundle; several are one MultiHeadModel exported as one multi-head bundle
    (one trace and one verification for all of them, the matrix's way of halving its time), each head's labels
    checked against PyTorch's. A step that fails for the bundle fails every head.

    ``status``: "served" when all of it holds, "refused" when export refused the model with an error that
    names the architecture, "failed" for anything else (a crash, a wrong label, an unnamed refusal).
    """
    import torch

    from . import attach_head, attach_heads
    from .errors import HeadregError
    from .export import ExportOptions, export_onnx, verify_bundle
    from .runtime import Predictor
    from .testing import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    heads = tuple(heads)
    results = {head: Result(model_type, head, "failed") for head in heads}

    def fail(reason: str, status: str = "failed", only: Sequence[str] = heads) -> dict[str, Result]:
        for head in only:
            results[head].status, results[head].reason = status, reason
        return results

    start = time.perf_counter()
    step = "attach"
    try:
        backbone = tiny_backbone(model_type)
        torch.manual_seed(0)
        if len(heads) == 1:
            model = attach_head(backbone, heads[0], **HEAD_OPTIONS[heads[0]]).eval()
        else:
            model = attach_heads(backbone, {head: (head, HEAD_OPTIONS[head]) for head in heads}).eval()
        step = "export"
        from .export.bundle import position_limit

        # a model without a position limit (ALiBi, no table) needs --max-length, as its refusal says
        max_length = None if position_limit(model) else MAX_POSITIONS
        try:
            with _quiet():
                bundle = export_onnx(model, Path(workdir) / f"{model_type}-{'+'.join(heads)}", tokenizer,
                                     ExportOptions(exporter=exporter, max_length=max_length), overwrite=True,
                                     progress=False)
        except HeadregError as exc:
            if model_type in str(exc) or type(backbone).__name__ in str(exc):
                return fail(_first_line(exc), "refused")
            return fail(f"export error without the architecture's name: {_first_line(exc)}")
        manifest = bundle.manifest
        for result in results.values():
            result.exporter = manifest["exporter"]
            result.max_length = manifest["max_length"]
            result.batch_padding = manifest.get("batch_padding", True)
        step = "verify"
        rerun = verify_bundle(bundle.path)
        if not rerun.passed:
            return fail(f"verify_bundle: {rerun.message()[:300]}")
        step = "predict"
        predictor = Predictor(bundle.path)
        want = torch_labels(model, tokenizer, texts, manifest["max_length"])
        got = runtime_labels(predictor, texts, heads)
        for head in heads:
            problem = disagreement(got[head], want[head])
            if problem:
                fail(f"truncate: {problem}", only=[head])
        if manifest["padding_side"] == "left" and manifest.get("batch_padding", True):
            step = "right padding"
            problem = padding_sides_disagree(predictor, texts[:-1])
            if problem:
                return fail(f"right padding: {problem}")
        step = "window"
        # every text in one call: the long one's windows share batches with the short texts
        windowed = runtime_labels(predictor, texts, heads, long_text="window")
        for head in (head for head in heads if not results[head].reason):
            problem = disagreement(windowed[head][:-1], want[head][:-1])
            if problem:
                fail(f"window: {problem}", only=[head])
            elif head == "token_cls" and len(windowed[head][-1]) <= len(want[head][-1]):
                fail("window: the long text got no more tokens than one window holds", only=[head])
        for result in results.values():
            if not result.reason:
                result.status = "served"
    except Exception as exc:  # noqa: BLE001 - the matrix records every failure with its step
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        fail(f"{step}: {type(exc).__name__}: {_first_line(exc)} ({Path(frame.filename).name}:{frame.lineno})")
    finally:
        for result in results.values():
            result.seconds = round((time.perf_counter() - start) / len(heads), 2)
    return results
