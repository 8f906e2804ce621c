"""``import headreg`` and listing heads must not import torch or transformers (production images lack them)."""

import subprocess
import sys

CHECK = (
    "import sys, headreg; headreg.list_heads(); headreg.get_head('ner'); "
    "import headreg.cli; "
    "print(','.join(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))"
)


def test_import_and_listing_do_not_import_torch_or_transformers():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


PUBLIC = {
    "HeadOutput", "HeadSpec", "HeadedModel", "MultiHeadCollator", "MultiHeadModel", "MultiHeadOutput", "__version__",
    "attach_head", "attach_heads", "from_transformers", "get_head", "hookimpl", "is_head", "list_heads", "load_model",
}


def test_public_names_are_exactly_the_documented_ones():
    import re
    from pathlib import Path

    import headreg

    assert set(headreg.__all__) == PUBLIC and len(headreg.__all__) == len(PUBLIC)
    assert dir(headreg) == sorted(PUBLIC)
    assert all(hasattr(headreg, name) for name in headreg.__all__)
    root = Path(__file__).resolve().parents[1]
    docs = "\n".join(path.read_text() for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    undocumented = sorted(name for name in PUBLIC if not re.search(rf"(?<!\w){re.escape(name)}\b", docs))
    assert not undocumented, f"public names the README and docs/ never mention: {undocumented}"


def test_integrations_import_neither_their_engine_nor_torch():
    """Ray / Spark / pandas load when an integration is used, torch and transformers never."""
    check = (
        "import sys, headreg.integrations.ray, headreg.integrations.spark; "
        "print(','.join(m for m in ('torch', 'transformers', 'ray', 'pyspark', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
