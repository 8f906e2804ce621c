"""Tests of template_head. ``headreg.testing`` gives the fixtures (check_head, tiny_backbone, ...)."""

import pytest

pytest.importorskip("headreg_plugin_template", reason="install the plugin first: pip install -e plugins/template")

import torch  # noqa: E402

from headreg import attach_head, get_head  # noqa: E402

pytest_plugins = ["headreg.testing"]


def test_registered_by_this_distribution():
    assert get_head("template_head").plugin == "headreg-plugin-template"


def test_passes_the_headreg_kit(check_head):
    """Attach to tiny backbones, train, save/load, export + verify, predict without torch."""
    reports = check_head("template_head", num_labels=3, id2label=["neg", "neu", "pos"])
    prediction = next(report.predictions for report in reports if report.predictions)[0]
    assert prediction["label"] in {"neg", "neu", "pos"}
    assert all(-1.0 <= c <= 1.0 for c in prediction["cosine"])


def test_logits_are_scaled_cosines(tiny_backbone):
    model = attach_head(tiny_backbone("bert"), "template_head", num_labels=2, scale=5.0).eval()
    logits = model(input_ids=torch.tensor([[101, 7592, 102]])).logits
    assert logits.abs().max() <= 5.0 + 1e-5
