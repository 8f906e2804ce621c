"""attach_head on every supported architecture, losses and label checks, save/load, training."""

import json

import pytest
import torch

from headreg import HeadOutput, attach_head, load_model
from headreg.errors import BackboneError, HeadConfigError, LabelError, SaveLoadError, UnknownHeadError
from headreg.testing import ARCHITECTURES, tiny_backbone

B, T = 3, 7


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (B, T), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return ids, mask


def _labels(head, num_labels):
    if head == "seq_cls":
        return torch.tensor([0, num_labels - 1, 1])
    if head == "multi_label":
        return torch.tensor([[1.0] + [0.0] * (num_labels - 1)] * B)
    if head == "regression":
        return torch.randn(B)
    return torch.randint(0, num_labels, (B, T))


HEADS = {"seq_cls": 3, "multi_label": 4, "regression": 1, "token_cls": 5}


@pytest.mark.parametrize("arch", [*ARCHITECTURES, "qwen2"])
@pytest.mark.parametrize("head", list(HEADS))
def test_every_builtin_head_attaches_to_every_architecture(arch, head):
    num_labels = HEADS[head]
    model = attach_head(tiny_backbone(arch), head, num_labels=num_labels)
    ids, mask = _batch()
    out = model(input_ids=ids, attention_mask=mask, labels=_labels(head, num_labels))
    assert isinstance(out, HeadOutput)
    expected = (B, T, num_labels) if head == "token_cls" else (B, num_labels)
    assert tuple(out.logits.shape) == expected
    assert out.pooled_output.shape == (B, model.backbone.config.hidden_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.head.classifier.out.weight.grad is not None


def test_real_minilm_gives_distinct_pooled_outputs(minilm_path, minilm_tokenizer):
    from transformers import AutoModel

    model = attach_head(AutoModel.from_pretrained(minilm_path), "seq_cls", num_labels=2).eval()
    enc = minilm_tokenizer(["A happy dog.", "Quarterly revenue fell sharply."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    assert out.pooled_output.shape == (2, 384)
    assert not torch.allclose(out.pooled_output[0], out.pooled_output[1])


# -- bad input -------------------------------------------------------------------------------------------


def test_unknown_head_suggests_a_name():
    with pytest.raises(UnknownHeadError, match="did you mean 'token_cls'"):
        attach_head(tiny_backbone(), "token_clf")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_num_labels_must_be_a_positive_integer(bad):
    with pytest.raises(HeadConfigError, match="num_labels must be an integer >= 1"):
        attach_head(tiny_backbone(), "seq_cls", num_labels=bad)


def test_multi_label_with_one_label_is_refused():
    with pytest.raises(HeadConfigError, match="multi_label needs num_labels >= 2"):
        attach_head(tiny_backbone(), "multi_label", num_labels=1)


def test_seq_cls_with_one_label_is_refused():
    """A softmax over one label answers it with score 1.0 whatever the text: silently useless."""
    with pytest.raises(HeadConfigError, match="seq_cls needs num_labels >= 2.*'regression' head"):
        attach_head(tiny_backbone(), "seq_cls", num_labels=1)


def test_id2label_must_match_num_labels():
    with pytest.raises(HeadConfigError, match="id2label has 2 entries"):
        attach_head(tiny_backbone(), "seq_cls", num_labels=3, id2label={0: "a", 1: "b"})


def test_label2id_is_accepted_and_inverted():
    model = attach_head(tiny_backbone(), "seq_cls", label2id={"neg": 0, "pos": 1})
    assert model.head_config.num_labels == 2
    assert model.head_config.id2label == {0: "neg", 1: "pos"}


def test_unknown_option_lists_the_head_options():
    with pytest.raises(HeadConfigError, match="no option.*num_label.*options are"):
        attach_head(tiny_backbone(), "seq_cls", num_label=3)


@pytest.mark.parametrize("not_a_backbone", [torch.nn.Linear(4, 4), "bert-base-uncased", None])
def test_backbone_must_be_a_transformers_model(not_a_backbone):
    with pytest.raises(BackboneError, match="needs a transformers backbone"):
        attach_head(not_a_backbone, "seq_cls")


def test_task_model_as_backbone_points_to_its_base_model():
    from transformers import AutoModelForSequenceClassification

    from headreg.testing import tiny_config

    task_model = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
    with pytest.raises(BackboneError, match="model.bert"):
        attach_head(task_model, "seq_cls")


@pytest.mark.parametrize(
    "head, labels, expected",
    [
        ("seq_cls", torch.tensor([0.0, 1.0, 1.0]), r"integer class ids of shape \(3,\), got torch.float32"),
        ("seq_cls", torch.tensor([[0], [1], [1]]), r"shape \(3,\), got shape \(3, 1\)"),
        ("seq_cls", torch.tensor([0, 1, 7]), r"class ids in \[0, 3\)"),
        ("multi_label", torch.tensor([0, 1, 1]), r"shape \(3, 3\), got shape \(3,\)"),
        ("regression", torch.ones(3, 2), r"shape \(3, 1\), got shape \(3, 2\)"),
        ("token_cls", torch.tensor([0, 1, 1]), r"shape \(3, 7\), got shape \(3,\)"),
        ("token_cls", torch.zeros(3, 7), r"integer class ids"),
    ],
)
def test_labels_of_the_wrong_dtype_or_shape_say_what_was_expected(head, labels, expected):
    model = attach_head(tiny_backbone(), head, num_labels=3 if head != "regression" else 1)
    ids, mask = _batch()
    with pytest.raises(LabelError, match=expected):
        model(input_ids=ids, attention_mask=mask, labels=labels)


def test_token_loss_ignores_padding_and_minus_100():
    model = attach_head(tiny_backbone(), "token_cls", num_labels=3).eval()
    ids, mask = _batch()
    labels = torch.randint(0, 3, (B, T))
    base = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    changed = labels.clone()
    changed[mask == 0] = 2 - changed[mask == 0]  # different labels on padding must not matter
    changed[0, 0] = -100
    labels[0, 0] = -100
    assert torch.allclose(model(input_ids=ids, attention_mask=mask, labels=changed).loss,
                          model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    assert not torch.allclose(base, model(input_ids=ids, attention_mask=mask, labels=labels).loss)


# -- save / load -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, head", [("bert", "seq_cls"), ("roberta", "multi_label"), ("distilbert", "regression"),
                                        ("modernbert", "token_cls"), ("llama", "seq_cls")])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, arch, head):
    model = attach_head(tiny_backbone(arch), head, num_labels=HEADS[head], hidden_layers=[16], dropout=0.2).eval()
    ids, mask = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask)
    model.save_pretrained(tmp_path / "m")
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert {"headreg_model.json", "head.safetensors", "backbone/config.json", "backbone/model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = load_model(tmp_path / "m")
    assert loaded.head_config == model.head_config
    with torch.no_grad():
        after = loaded(input_ids=ids, attention_mask=mask)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.pooled_output, after.pooled_output)


def test_save_refuses_a_non_empty_directory_unless_overwrite(tmp_path):
    model = attach_head(tiny_backbone(), "seq_cls")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("precious")
    with pytest.raises(SaveLoadError, match="overwrite=True"):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "keep.txt").read_text() == "precious"
    # overwrite replaces a saved model only, never a directory of something else
    with pytest.raises(SaveLoadError, match="not a headreg saved model"):
        model.save_pretrained(tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "keep.txt").read_text() == "precious"
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "stale.txt").write_text("from the old save")
    model.save_pretrained(tmp_path / "saved", overwrite=True)
    assert not (tmp_path / "saved" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "saved"]  # no temp dirs left beside them


def test_failed_save_leaves_nothing_behind(tmp_path):
    class DiskFull:
        def save_pretrained(self, directory):
            (directory / "tokenizer.json").write_text("{")
            raise OSError("No space left on device")

    model = attach_head(tiny_backbone(), "seq_cls")
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(tmp_path / "m", tokenizer=DiskFull())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(tmp_path):
    model = attach_head(tiny_backbone(), "seq_cls", num_labels=3)
    return model.save_pretrained(tmp_path / "m")


@pytest.mark.parametrize("missing", ["headreg_model.json", "head.safetensors", "backbone/config.json"])
def test_load_with_missing_files_names_them(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(SaveLoadError, match=missing.replace("/", ".")):
        load_model(saved)


def test_load_with_corrupt_files_says_which(saved):
    (saved / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SaveLoadError, match="head.safetensors is corrupt"):
        load_model(saved)
    (saved / "headreg_model.json").write_text("{not json")
    with pytest.raises(SaveLoadError, match="headreg_model.json is corrupt"):
        load_model(saved)


def test_load_with_weights_for_another_head_shape_is_refused(saved):
    config = json.loads((saved / "headreg_model.json").read_text())
    config["head_config"]["num_labels"] = 5
    config["head_config"]["id2label"] = None
    (saved / "headreg_model.json").write_text(json.dumps(config))
    with pytest.raises(SaveLoadError, match="does not fit head 'seq_cls'"):
        load_model(saved)


def test_load_never_runs_code_named_in_the_files_without_trust_remote_code(saved, tmp_path):
    marker = tmp_path / "ran"
    (saved / "backbone" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((saved / "backbone" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (saved / "backbone" / "config.json").write_text(json.dumps(config))
    model = load_model(saved)  # transformers' own BERT class is used; evil.py is never imported
    assert type(model.backbone).__module__.startswith("transformers.")
    assert not marker.exists()


def test_load_from_an_unknown_plugin_says_what_to_install(saved):
    config = json.loads((saved / "headreg_model.json").read_text())
    config.update(head="crf_from_elsewhere", plugin="headreg-plugin-elsewhere", plugin_version="2.0")
    (saved / "headreg_model.json").write_text(json.dumps(config))
    with pytest.raises(SaveLoadError, match="pip install headreg-plugin-elsewhere"):
        load_model(saved)


# -- training --------------------------------------------------------------------------------------------


def test_plain_torch_loop_reduces_the_loss():
    torch.manual_seed(0)
    model = attach_head(tiny_backbone(), "seq_cls", num_labels=2).train()
    ids, mask = _batch()
    labels = torch.tensor([0, 1, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_transformers_trainer_fine_tunes_a_headed_model(tmp_path, minilm_path, minilm_tokenizer):
    from transformers import AutoModel, Trainer, TrainingArguments

    texts = ["good movie", "great film", "loved it", "bad movie", "awful film", "hated it"] * 2
    labels = [1, 1, 1, 0, 0, 0] * 2
    enc = minilm_tokenizer(texts, padding=True)
    dataset = [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
        for i in range(len(texts))
    ]
    torch.manual_seed(0)
    # BERT's pooler, not the checkpoint's own mean + Normalize: unit vectors give a fresh linear head logits too
    # small to halve the loss in these few steps, and this test is about the Trainer, not the pooling.
    model = attach_head(AutoModel.from_pretrained(minilm_path), "seq_cls", num_labels=2, pooling="pooler")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=12,
                             num_train_epochs=4, learning_rate=2e-4, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.5 * before


def test_saved_directory_gets_ordinary_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        target = attach_head(tiny_backbone(), "seq_cls").save_pretrained(tmp_path / "m")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_save_pretrained_names_what_tokenizer_it_takes(tmp_path):
    model = attach_head(tiny_backbone(), "seq_cls", num_labels=2)
    with pytest.raises(SaveLoadError, match="tokenizer must be a transformers tokenizer.*got str"):
        model.save_pretrained(tmp_path / "m", tokenizer="bert-base-uncased")
    assert not (tmp_path / "m").exists()
