"""The CRF maths: torch and numpy Viterbi agree exactly, and both agree with brute force over every path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from headreg import attach_head
from headreg.errors import HeadConfigError, LabelError
from headreg_plugin_crf.decoding import marginals, viterbi
from headreg_plugin_crf.head import crf_log_partition, viterbi_decode

pytest_plugins = ["headreg.testing"]


def random_crf(batch: int, length: int, tags: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    emissions = torch.randn(batch, length, tags, generator=generator)
    start, transitions, end = (torch.randn(*shape, generator=generator) for shape in ((tags,), (tags, tags), (tags,)))
    return emissions, start, transitions, end


def padding_masks(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Right padding, left padding, a hole, an empty row and a one-token row, in that rotation."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), dtype=bool)
    for row in range(batch):
        kind, cut = row % 5, int(rng.integers(1, length))
        if kind == 0:
            mask[row, cut:] = False
        elif kind == 1:
            mask[row, :cut] = False
        elif kind == 2:
            mask[row, cut] = False
        elif kind == 3 and row % 10 == 3:
            mask[row] = False
        elif kind == 4:
            mask[row] = False
            mask[row, cut] = True
    return torch.from_numpy(mask)


def brute_force(emissions, mask, start, transitions, end):
    """Score of every tag path through the unmasked tokens of one row: {path: score}."""
    positions = [t for t in range(len(mask)) if mask[t]]
    scores = {}
    if not positions:
        return positions, scores
    for path in itertools.product(range(emissions.shape[-1]), repeat=len(positions)):
        score = start[path[0]] + end[path[-1]] + sum(emissions[p, k] for p, k in zip(positions, path))
        score += sum(transitions[a, b] for a, b in zip(path, path[1:]))
        scores[path] = float(score)
    return positions, scores


def test_numpy_viterbi_equals_torch_viterbi_on_every_token_with_padding():
    emissions, start, transitions, end = random_crf(batch=200, length=24, tags=7, seed=1)
    mask = padding_masks(200, 24, seed=1)
    torch_tags = viterbi_decode(emissions, mask, start, transitions, end).numpy()
    numpy_tags = viterbi(emissions.numpy(), mask.numpy(), start.numpy(), transitions.numpy(), end.numpy())
    assert (numpy_tags == torch_tags).mean() == 1.0
    assert (numpy_tags[~mask.numpy()] == -1).all() and (numpy_tags[mask.numpy()] >= 0).all()


def test_decoding_and_partition_match_brute_force_over_all_paths():
    emissions, start, transitions, end = random_crf(batch=10, length=5, tags=3, seed=2)
    mask = padding_masks(10, 5, seed=2)
    tags = viterbi_decode(emissions, mask, start, transitions, end)
    log_z = crf_log_partition(emissions, mask, start, transitions, end)
    probs = marginals(emissions.numpy(), mask.numpy(), start.numpy(), transitions.numpy(), end.numpy())
    for row in range(10):
        positions, scores = brute_force(emissions[row], mask[row], start, transitions, end)
        if not positions:
            continue
        best = max(scores, key=scores.get)
        assert [int(tags[row, p]) for p in positions] == list(best)
        total = np.logaddexp.reduce(list(scores.values()))
        assert float(log_z[row]) == pytest.approx(total, abs=1e-4)
        expected = np.zeros((5, 3))
        for path, score in scores.items():
            for p, k in zip(positions, path):
                expected[p, k] += np.exp(score - total)
        np.testing.assert_allclose(probs[row], expected, atol=1e-6)


def test_loss_is_the_negative_log_likelihood_and_ignores_padding_side(tiny_backbone):
    model = attach_head(tiny_backbone("bert"), "crf", num_labels=3, dropout=0.0)
    head = model.head
    emissions, *_ = random_crf(batch=1, length=4, tags=3, seed=3)
    labels = torch.tensor([[0, 2, 1, 1]])
    loss = head.loss(emissions, labels, torch.ones(1, 4))
    with torch.no_grad():
        _, scores = brute_force(emissions[0], [1, 1, 1, 1], head.start_transitions, head.transitions, head.end_transitions)
    expected = np.logaddexp.reduce(list(scores.values())) - scores[(0, 2, 1, 1)]
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    # The same row padded on the left (as decoders are) scores the same.
    left = torch.cat([torch.zeros(1, 2, 3), emissions], dim=1)
    left_loss = head.loss(left, torch.tensor([[-100, -100, 0, 2, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1, 1]]))
    assert left_loss.item() == pytest.approx(loss.item(), abs=1e-5)


def test_ignored_labels_are_marginalised_not_cut_from_the_chain(tiny_backbone):
    model = attach_head(tiny_backbone("bert"), "crf", num_labels=3, dropout=0.0)
    head = model.head
    emissions, *_ = random_crf(batch=1, length=4, tags=3, seed=4)
    loss = head.loss(emissions, torch.tensor([[-100, 2, -100, 1]]), torch.ones(1, 4))
    with torch.no_grad():
        _, scores = brute_force(emissions[0], [1, 1, 1, 1], head.start_transitions, head.transitions, head.end_transitions)
    gold = np.logaddexp.reduce([s for path, s in scores.items() if path[1] == 2 and path[3] == 1])
    assert loss.item() == pytest.approx(np.logaddexp.reduce(list(scores.values())) - gold, abs=1e-4)
    # A row with no labels at all contributes nothing.
    assert head.loss(emissions, torch.full((1, 4), -100), torch.ones(1, 4)).item() == 0.0


def test_training_learns_transitions_that_emissions_cannot_tell(tiny_backbone, single_torch_thread):
    """Tags follow 0 -> 1 -> 2 -> 0 ...; the emissions only show where the cycle starts, so only transitions help."""
    torch.manual_seed(0)
    model = attach_head(tiny_backbone("bert"), "crf", num_labels=3, dropout=0.0)
    head = model.head
    length, batch = 8, 16
    features = torch.randn(batch, length, 32) * 0.1
    starts = torch.randint(0, 3, (batch,))
    features[:, 0, :3] += torch.nn.functional.one_hot(starts, 3) * 3.0
    labels = (starts.unsqueeze(1) + torch.arange(length)) % 3
    mask = torch.ones(batch, length)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        loss = head.loss(head(None, features, mask), labels, mask)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        emissions = head(None, features, mask)
    accuracy = (head.decode(emissions, mask) == labels).float().mean().item()
    argmax_accuracy = (emissions.argmax(-1) == labels).float().mean().item()
    assert accuracy == 1.0
    assert argmax_accuracy < 0.8


def test_bad_options_and_labels_say_what_was_expected(tiny_backbone):
    with pytest.raises(HeadConfigError, match="aggregation must be one of"):
        attach_head(tiny_backbone("bert"), "crf", num_labels=3, aggregation="mean")
    model = attach_head(tiny_backbone("bert"), "crf", num_labels=3)
    ids = torch.tensor([[101, 2000, 102]])
    with pytest.raises(LabelError, match="one tag id per token"):
        model(input_ids=ids, labels=torch.tensor([1]))
    with pytest.raises(LabelError, match=r"class ids in \[0, 3\)"):
        model(input_ids=ids, labels=torch.tensor([[0, 5, 1]]))
