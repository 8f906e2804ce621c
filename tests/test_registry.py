"""Registry queries: list/get/is_head, aliases, did-you-mean, wildcard filters."""

import pytest

import headreg
from headreg import get_head, is_head, list_heads
from headreg.errors import HeadCollisionError, UnknownHeadError
from headreg.registry import HeadSpec, Registry

BUILTINS = {"seq_cls", "multi_label", "regression", "token_cls"}


def test_builtins_are_registered_with_their_metadata():
    specs = {spec.name: spec for spec in list_heads(plugin="headreg")}
    assert set(specs) == BUILTINS
    assert specs["token_cls"].level == "token"
    assert specs["seq_cls"].postprocess == "headreg.runtime.postprocess:seq_cls"
    assert all(spec.builtin and spec.version == headreg.__version__ for spec in specs.values())


@pytest.mark.parametrize(
    "alias, name",
    [("text-classification", "seq_cls"), ("sequence-classification", "seq_cls"), ("ner", "token_cls"),
     ("token-classification", "token_cls"), ("multi-label-classification", "multi_label"),
     ("text-regression", "regression")],
)
def test_aliases_resolve_to_the_canonical_head(alias, name):
    assert get_head(alias).name == name
    assert is_head(alias)


def test_list_heads_filters_by_wildcard_task_and_plugin():
    assert [s.name for s in list_heads("*cls")] == ["seq_cls", "token_cls"]
    assert [s.name for s in list_heads("ner")] == ["token_cls"]  # wildcards match aliases too
    assert [s.name for s in list_heads(task="regression")] == ["regression"]
    assert [s.name for s in list_heads(exclude="*cls", plugin="headreg")] == ["multi_label", "regression"]
    assert list_heads(plugin="no-such-dist") == []


def test_unknown_head_suggests_the_closest_name_and_lists_installed():
    with pytest.raises(UnknownHeadError) as err:
        get_head("seq_clf")
    message = str(err.value)
    assert "did you mean 'seq_cls'" in message
    assert "installed:" in message and "token_cls" in message
    assert not is_head("seq_clf")


def test_specs_are_frozen():
    spec = get_head("seq_cls")
    with pytest.raises(AttributeError):
        spec.name = "other"


def _spec(name, plugin, aliases=()):
    return HeadSpec(name=name, cls="pkg.mod:Head", task="custom", aliases=aliases, plugin=plugin, version="1.0")


def test_collision_names_both_distributions_and_override_replaces_with_warning():
    registry = Registry()
    registry.add(_spec("x", "dist-a", aliases=("ex",)))
    with pytest.raises(HeadCollisionError) as err:
        registry.add(_spec("y", "dist-b", aliases=("ex",)))
    assert "dist-a" in str(err.value) and "dist-b" in str(err.value)
    with pytest.warns(UserWarning, match="overrides"):
        registry.add(_spec("x", "dist-b"), override=True)
    assert registry.get("x").plugin == "dist-b"
    assert "ex" not in registry  # the replaced head's aliases go with it


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "a/b"])
def test_invalid_names_are_rejected(bad):
    with pytest.raises(ValueError, match="invalid head name"):
        Registry().add(_spec(bad, "dist-a"))
