"""from_transformers: transformers' own task models become HeadedModels with the same weights and logits."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from headreg import from_transformers
from headreg.errors import BackboneError
from headreg.testing import tiny_config


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (3, 9), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _hf(auto, arch, **config):
    torch.manual_seed(0)
    return auto.from_config(tiny_config(arch, **config)).eval()


SEQUENCE_ARCHS = ["bert", "roberta", "distilbert", "electra", "deberta-v2", "xlm-roberta", "modernbert", "llama"]


@pytest.mark.parametrize("arch", SEQUENCE_ARCHS)
@pytest.mark.parametrize(
    "problem, head, num_labels",
    [("single_label_classification", "seq_cls", 3), ("multi_label_classification", "multi_label", 4),
     ("regression", "regression", 1)],
)
def test_sequence_classification_logits_match_transformers(arch, problem, head, num_labels):
    hf = _hf(AutoModelForSequenceClassification, arch, num_labels=num_labels, problem_type=problem)
    model = from_transformers(hf).eval()
    assert model.head_name == head
    ids, mask = _inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra", "deberta-v2", "xlm-roberta"])
def test_token_classification_logits_match_transformers(arch):
    hf = _hf(AutoModelForTokenClassification, arch, num_labels=5,
             id2label={i: f"TAG{i}" for i in range(5)}, label2id={f"TAG{i}": i for i in range(5)})
    model = from_transformers(hf).eval()
    assert model.head_name == "token_cls"
    assert model.head_config.id2label == {i: f"TAG{i}" for i in range(5)}
    ids, mask = _inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        out = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert out.pooled_output.shape == (3, 32)


def test_problem_type_defaults_follow_num_labels():
    assert from_transformers(_hf(AutoModelForSequenceClassification, "bert", num_labels=1)).head_name == "regression"
    assert from_transformers(_hf(AutoModelForSequenceClassification, "bert", num_labels=2)).head_name == "seq_cls"


def test_real_minilm_checkpoint_round_trips(minilm_path, tmp_path):
    from transformers import AutoModel

    hf = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    model = from_transformers(hf).eval()
    ids, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   hf(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    assert isinstance(model.backbone, type(AutoModel.from_pretrained(minilm_path)))


def test_non_task_models_are_refused_with_a_hint():
    from transformers import AutoModel

    with pytest.raises(BackboneError, match="ForSequenceClassification"):
        from_transformers(AutoModel.from_config(tiny_config("bert")))
    with pytest.raises(BackboneError, match="transformers task model"):
        from_transformers(torch.nn.Linear(2, 2))
