"""The ordinal head: rank consistency by construction, the CORAL loss, the numpy postprocess, the headreg kit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headreg import attach_head
from headreg.errors import HeadConfigError, LabelError
from headreg.runtime.postprocess import Context
from headreg_plugin_ordinal.postprocess import ordinal, rank_probabilities

pytest_plugins = ["headreg.testing"]

STARS = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]


def test_cumulative_logits_never_increase_whatever_the_weights(tiny_backbone):
    model = attach_head(tiny_backbone("bert"), "ordinal", num_labels=6).eval()
    head = model.head
    with torch.no_grad():
        head.raw_gaps.copy_(torch.tensor([-30.0, 5.0, -2.0, 40.0]))  # collapsed, wide and huge gaps
        pooled = torch.randn(64, 32) * 50
        logits = head(pooled, None, None)
    assert logits.shape == (64, 5)
    assert bool((logits[:, 1:] <= logits[:, :-1]).all())
    exceed, per_rank = rank_probabilities(logits.numpy())
    assert (per_rank >= 0).all() and np.allclose(per_rank.sum(axis=1), 1.0)
    ranks = (exceed > 0.5).sum(axis=1)
    # Rank consistency: the thresholds passed are exactly the first `rank` ones.
    assert all((exceed[i, :r] > 0.5).all() and (exceed[i, r:] <= 0.5).all() for i, r in enumerate(ranks))


def test_loss_is_coral_binary_cross_entropy_summed_over_thresholds(tiny_backbone):
    head = attach_head(tiny_backbone("bert"), "ordinal", num_labels=4, importance_weights=[1.0, 2.0, 0.5]).head
    logits = torch.tensor([[2.0, 0.5, -1.0], [1.0, -0.5, -3.0]])
    labels = torch.tensor([2, 0])  # rank 2 passes thresholds 0 and 1; rank 0 passes none
    expected = 0.0
    for row, rank in zip(logits.tolist(), labels.tolist()):
        for k, (logit, weight) in enumerate(zip(row, [1.0, 2.0, 0.5])):
            p = 1 / (1 + math.exp(-logit))
            expected -= weight * (math.log(p) if rank > k else math.log(1 - p))
    assert head.loss(logits, labels, None).item() == pytest.approx(expected / 2, rel=1e-5)


def test_postprocess_gives_rank_label_and_probabilities():
    logits = np.array([[3.0, 1.0, -1.0, -3.0], [-4.0, -5.0, -6.0, -7.0]], dtype=np.float32)
    context = Context(manifest={}, config={"id2label": {str(i): s for i, s in enumerate(STARS)}})
    first, second = ordinal([{"logits": row} for row in logits], context)
    assert (first["rank"], first["label"]) == (2, "3 stars")
    assert (second["rank"], second["label"]) == (0, "1 star")
    assert list(first["probabilities"]) == STARS
    assert sum(first["probabilities"].values()) == pytest.approx(1.0)
    assert first["score"] == pytest.approx(first["probabilities"]["3 stars"])
    assert first["exceed_probabilities"] == pytest.approx([1 / (1 + math.exp(-v)) for v in logits[0]], rel=1e-6)
    assert first["expected_rank"] == pytest.approx(sum(first["exceed_probabilities"]))


def test_bad_options_and_labels_say_what_was_expected(tiny_backbone):
    with pytest.raises(HeadConfigError, match="num_labels >= 2 ranks"):
        attach_head(tiny_backbone("bert"), "ordinal", num_labels=1)
    with pytest.raises(HeadConfigError, match="num_labels - 1 = 4 positive values"):
        attach_head(tiny_backbone("bert"), "ordinal", num_labels=5, importance_weights=[1.0, 1.0])
    model = attach_head(tiny_backbone("bert"), "ordinal", num_labels=5)
    ids = torch.tensor([[101, 2000, 102]])
    with pytest.raises(LabelError, match="one rank per text"):
        model(input_ids=ids, labels=torch.tensor([[0.2, 0.8]]))
    with pytest.raises(LabelError, match=r"class ids in \[0, 5\)"):
        model(input_ids=ids, labels=torch.tensor([5]))


def test_ordinal_passes_the_headreg_kit(check_head):
    reports = check_head("ordinal")  # default options: 5 ranks
    (prediction, *_) = next(report.predictions for report in reports if report.predictions)
    assert prediction["label"] == f"LABEL_{prediction['rank']}" and 0 <= prediction["rank"] < 5
    assert len(prediction["exceed_probabilities"]) == 4
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
