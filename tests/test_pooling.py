"""Pooling strategies: mask-aware mean/max, last token under left and right padding, auto per architecture."""

import pytest
import torch

from headreg import attach_head
from headreg.pooling import last_token_index, max_pool, mean_pool, resolve_pooling
from headreg.testing import tiny_backbone


def test_mean_and_max_ignore_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(max_pool(hidden, mask), torch.tensor([[3.0, 4.0]]))


def test_last_token_index_handles_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 4]


@pytest.mark.parametrize(
    "arch, strategy, projection, activation",
    [("bert", "pooler", False, None), ("roberta", "cls", True, "tanh"), ("xlm-roberta", "cls", True, "tanh"),
     ("electra", "cls", True, "gelu"), ("distilbert", "cls", True, "relu"), ("deberta-v2", "cls", True, "gelu"),
     ("modernbert", "cls", True, "gelu"), ("llama", "last", False, None), ("qwen2", "last", False, None)],
)
def test_auto_pooling_follows_transformers_sequence_classification(arch, strategy, projection, activation):
    config = resolve_pooling("auto", tiny_backbone(arch))
    assert (config.strategy, config.projection, config.activation) == (strategy, projection, activation)


def test_token_heads_pool_the_first_token_without_projection():
    config = resolve_pooling("auto", tiny_backbone("roberta"), level="token")
    assert (config.strategy, config.projection) == ("cls", False)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decoder_gives_the_same_result_for_left_and_right_padding(arch):
    model = attach_head(tiny_backbone(arch), "seq_cls", num_labels=3).eval()
    ids = torch.randint(1000, 2000, (1, 6))
    right = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    right_mask = torch.tensor([[1] * 6 + [0] * 3])
    left_mask = torch.tensor([[0] * 3 + [1] * 6])
    with torch.no_grad():
        alone = model(input_ids=ids).logits
        r = model(input_ids=right, attention_mask=right_mask).logits
        l_ = model(input_ids=left, attention_mask=left_mask).logits
    torch.testing.assert_close(r, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(l_, alone, atol=1e-5, rtol=1e-4)


def test_pooler_strategy_on_a_backbone_without_pooler_is_refused():
    from headreg.errors import HeadConfigError

    with pytest.raises(HeadConfigError, match="has none"):
        attach_head(tiny_backbone("distilbert"), "seq_cls", pooling="pooler")


def test_a_pooling_dict_with_an_unknown_field_names_the_fields():
    from headreg import attach_head
    from headreg.errors import HeadConfigError
    from headreg.testing import tiny_backbone

    with pytest.raises(HeadConfigError, match="pooling has no field.*'foo'.*strategy, projection"):
        attach_head(tiny_backbone("bert"), "seq_cls", num_labels=2, pooling={"strategy": "mean", "foo": 1})
    with pytest.raises(HeadConfigError, match="dropout must be in \\[0, 1\\), got 'x'"):
        attach_head(tiny_backbone("bert"), "seq_cls", num_labels=2, dropout="x")
    assert attach_head(tiny_backbone("bert"), "seq_cls", num_labels=2, pooling={"strategy": "mean"}).pooler.config.strategy == "mean"
