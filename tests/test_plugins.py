"""Plugin loading with real pip-installed distributions: discovery, isolation of failures, collisions,
allow/deny lists, strict mode, and plugins built for a newer hook than this headreg offers."""

import json

import pytest

from conftest import pip_install, run_headreg, write_plugin

pytestmark = pytest.mark.slow  # pip installs a site of test plugins and runs the CLI (and a server) in subprocesses

GOOD = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="sentiment_x", cls="sentiment_plugin.head:Head", task="sequence-classification",
             aliases=("sx",), description="A plugin head.")
"""
BROKEN_IMPORT = """
raise RuntimeError("boom at import")
"""
BROKEN_HOOK = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="half_registered", cls="x.y:Z", task="custom")
    raise ValueError("boom in hook")
"""
COLLIDING = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="other_head", cls="x.y:Z", task="custom")
    register(name="sentiment_x", cls="collide_plugin.head:Head", task="custom")
"""
SIDE_EFFECT = """
import os, pathlib
pathlib.Path(os.environ["HEADREG_TEST_MARKER"]).write_text("imported")
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="marker_head", cls="x.y:Z", task="custom")
"""
NEWER_HOOK = """
from headreg import hookimpl

@hookimpl
def register_heads(register, register_postprocessor):
    register(name="future_head", cls="x.y:Z", task="custom")
"""
MISSPELT = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="typo_head", cls="x.y:Z", task="custom", postprocesss="x.y:post")
"""
UNIMPORTABLE_CLASS = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="ghost", cls="ghost_plugin.missing:GhostHead", task="custom")
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One site directory holding every test plugin, installed with pip in one go."""
    root = tmp_path_factory.mktemp("plugins")
    projects = [
        write_plugin(root, "headreg-plugin-sentiment", "sentiment_plugin", GOOD, entry_name="a_sentiment",
                     version="1.2.3"),
        write_plugin(root, "headreg-plugin-broken-import", "broken_import_plugin", BROKEN_IMPORT),
        write_plugin(root, "headreg-plugin-broken-hook", "broken_hook_plugin", BROKEN_HOOK),
        write_plugin(root, "headreg-plugin-collide", "collide_plugin", COLLIDING, entry_name="z_collide"),
        write_plugin(root, "headreg-plugin-marker", "marker_plugin", SIDE_EFFECT),
        write_plugin(root, "headreg-plugin-future", "future_plugin", NEWER_HOOK, requires=("headreg>=9.1",)),
        write_plugin(root, "headreg-plugin-ghost", "ghost_plugin", UNIMPORTABLE_CLASS),
        write_plugin(root, "headreg-plugin-typo", "typo_plugin", MISSPELT),
    ]
    target = root / "site"
    pip_install(target, *projects)
    return target


def _json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _plugins(site, **env):
    return {p["distribution"]: p for p in _json(run_headreg("plugins", "--json", site=site, env=env))}


def _heads(site, **env):
    return {h["name"]: h for h in _json(run_headreg("heads", "--json", site=site, env=env))}


def test_installed_plugin_head_appears_with_distribution_and_version(site, tmp_path):
    heads = _heads(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    assert heads["sentiment_x"]["plugin"] == "headreg-plugin-sentiment"
    assert heads["sentiment_x"]["version"] == "1.2.3"
    assert heads["sentiment_x"]["aliases"] == ["sx"]
    assert {"seq_cls", "multi_label", "regression", "token_cls"} <= set(heads)


def test_broken_plugins_are_recorded_and_leave_everything_else_working(site, tmp_path):
    result = run_headreg("heads", site=site, env={"HEADREG_TEST_MARKER": str(tmp_path / "m")})
    assert result.returncode == 0
    assert "seq_cls" in result.stdout and "sentiment_x" in result.stdout
    assert "failed to load" in result.stderr and "headreg-plugin-broken-import" in result.stderr

    plugins = _plugins(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    assert plugins["headreg-plugin-broken-import"]["status"] == "failed"
    assert "boom at import" in plugins["headreg-plugin-broken-import"]["error"]
    assert plugins["headreg-plugin-broken-hook"]["status"] == "failed"
    assert "boom in hook" in plugins["headreg-plugin-broken-hook"]["error"]
    assert plugins["headreg-plugin-sentiment"]["status"] == "loaded"
    # A plugin that fails halfway registers nothing at all.
    heads = _heads(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    assert "half_registered" not in heads


def test_a_misspelt_registration_field_fails_the_plugin_instead_of_being_dropped(site, tmp_path):
    plugins = _plugins(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    assert plugins["headreg-plugin-typo"]["status"] == "failed"
    assert "postprocesss" in plugins["headreg-plugin-typo"]["error"]


def test_name_collision_names_both_distributions_and_keeps_the_first(site, tmp_path):
    plugins = _plugins(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    error = plugins["headreg-plugin-collide"]["error"]
    assert plugins["headreg-plugin-collide"]["status"] == "failed"
    assert "headreg-plugin-collide" in error and "headreg-plugin-sentiment" in error
    heads = _heads(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    assert heads["sentiment_x"]["plugin"] == "headreg-plugin-sentiment"
    assert "other_head" not in heads  # all-or-nothing per plugin


def test_plugin_built_for_a_newer_hook_names_itself_and_the_headreg_it_needs(site, tmp_path):
    plugins = _plugins(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    error = plugins["headreg-plugin-future"]["error"]
    assert "headreg-plugin-future" in error
    assert "headreg>=9.1" in error
    assert "register_postprocessor" in error


def test_allow_list_and_deny_list_apply_before_import(site, tmp_path):
    marker = tmp_path / "marker"
    heads = _heads(site, HEADREG_LOAD_PLUGINS="", HEADREG_TEST_MARKER=str(marker))
    assert set(heads) == {"seq_cls", "multi_label", "regression", "token_cls"}
    assert not marker.exists()

    heads = _heads(site, HEADREG_LOAD_PLUGINS="a_sentiment,headreg-plugin-marker", HEADREG_TEST_MARKER=str(marker))
    assert {"sentiment_x", "marker_head"} <= set(heads) and "ghost" not in heads
    assert marker.read_text() == "imported"
    marker.unlink()

    plugins = _plugins(site, HEADREG_DISABLE_PLUGINS="headreg_plugin_marker", HEADREG_TEST_MARKER=str(marker))
    assert plugins["headreg-plugin-marker"]["status"] == "disabled"
    assert not marker.exists()


def test_strict_mode_turns_plugin_failures_into_errors(site, tmp_path):
    result = run_headreg(
        "heads", site=site, env={"HEADREG_STRICT_PLUGINS": "1", "HEADREG_TEST_MARKER": str(tmp_path / "m")}
    )
    assert result.returncode == 1
    assert "failed to load" in result.stderr and "HEADREG_STRICT_PLUGINS" in result.stderr


def test_head_whose_class_does_not_import_is_listed_but_fails_on_use_naming_the_plugin(site, tmp_path):
    import os
    import subprocess
    import sys

    heads = _heads(site, HEADREG_TEST_MARKER=str(tmp_path / "m"))
    assert heads["ghost"]["plugin"] == "headreg-plugin-ghost"
    script = (
        "from headreg import attach_head\nfrom headreg.testing import tiny_backbone\n"
        "try:\n    attach_head(tiny_backbone('bert'), 'ghost')\nexcept ImportError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HEADREG_TEST_MARKER": str(tmp_path / "m")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "headreg-plugin-ghost" in out.stdout and "ghost_plugin.missing" in out.stdout


def test_serving_a_built_in_head_bundle_imports_no_plugin(site, tmp_path):
    """The marker plugin records its import; the server describes and runs a seq_cls bundle without it."""
    import os

    import httpx
    from test_runtime_predictor import tiny_bundle
    from test_serve import Server

    marker = tmp_path / "marker"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "HEADREG_TEST_MARKER": str(marker)}
    server = Server(tmp_path, f"sentiment={tiny_bundle('seq_cls')}", env=env)
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]
        predicted = httpx.post(f"{server.url}/v1/models/sentiment/predict", json={"inputs": ["a fine day"]}, timeout=30)
    finally:
        assert server.stop() == 0
    assert models[0]["task"] == "sequence-classification"  # from the manifest
    assert predicted.status_code == 200 and predicted.json()["outputs"][0]["label"]
    assert not marker.exists(), "serving a built-in head's bundle imported a plugin"
    run_headreg("heads", "--json", site=site, env={"HEADREG_TEST_MARKER": str(marker)})
    assert marker.read_text() == "imported"  # the same site and marker record a plugin import when one happens
