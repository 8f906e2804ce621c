"""Plugins cannot take the host down: real distributions, pip-installed into a private site directory, loaded by
the real `headreg` command in a subprocess (and a real SIGINT for Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import pip_install, run_headreg, write_plugin
from test_runtime_predictor import tiny_bundle

pytestmark = pytest.mark.slow  # pip installs a site of hostile plugins (~2 min here) and runs the CLI in subprocesses

BUILTINS = {"seq_cls", "multi_label", "regression", "token_cls"}

EXITS_AT_IMPORT = """
import sys
sys.exit(3)
"""
INTERRUPTS_AT_IMPORT = """
raise KeyboardInterrupt
"""
EXITS_IN_HOOK = """
import sys
from headreg import hookimpl

@hookimpl
def register_heads(register):
    sys.exit("bye")
"""
PRINTS = """
import os, sys
print("hello from a plugin at import")
os.write(1, b"raw bytes on fd 1\\n")
from headreg import hookimpl

@hookimpl
def register_heads(register):
    print("hello from the hook")
    register(name="chatty", cls="chatty_plugin:Head", task="custom", description="prints a lot")
"""
STRING_ALIASES = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="stringy", cls="x.y:Z", aliases="xyz")
"""
NOT_A_HOOK = """
register_heads = 42
"""
NAN_FIELD = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="nanny", cls="x.y:Z", task=float("nan"))
"""
BROKEN_OVERRIDE = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="seq_cls", cls="gone_module:Head", postprocess="gone_module:post", override=True)
"""
BAD_CONSTRUCTOR = """
from headreg import hookimpl
from headreg.heads.seq_cls import SeqClsHead


class Head(SeqClsHead):
    def __init__(self, config, hidden_size):
        raise ZeroDivisionError("the plugin's own bug")


@hookimpl
def register_heads(register):
    register(name="crashy", cls="crashy_plugin:Head", task="custom")
"""
MARKER = """
import os, pathlib, time
pathlib.Path(os.environ["HEADREG_TEST_MARKER"]).write_text("imported")
time.sleep(float(os.environ.get("HEADREG_TEST_SLEEP", "0")))
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="slowpoke", cls="x.y:Z", task="custom")
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening-plugins")
    projects = [
        write_plugin(root, "hp-exits", "exits_plugin", EXITS_AT_IMPORT),
        write_plugin(root, "hp-interrupts", "interrupts_plugin", INTERRUPTS_AT_IMPORT),
        write_plugin(root, "hp-exits-in-hook", "exits_hook_plugin", EXITS_IN_HOOK),
        write_plugin(root, "hp-chatty", "chatty_plugin", PRINTS),
        write_plugin(root, "hp-stringy", "stringy_plugin", STRING_ALIASES),
        write_plugin(root, "hp-not-a-hook", "not_a_hook_plugin", NOT_A_HOOK),
        write_plugin(root, "hp-nanny", "nanny_plugin", NAN_FIELD),
        write_plugin(root, "hp-broken-override", "broken_override_plugin", BROKEN_OVERRIDE),
        write_plugin(root, "hp-crashy", "crashy_plugin", BAD_CONSTRUCTOR),
        write_plugin(root, "hp-marker", "marker_plugin", MARKER),
    ]
    target = root / "site"
    pip_install(target, *projects)
    return target


@pytest.fixture
def marker(tmp_path):
    return {"HEADREG_TEST_MARKER": str(tmp_path / "marker")}


def test_every_bad_plugin_is_recorded_and_json_output_stays_json(site, marker):
    result = run_headreg("plugins", "--json", site=site, env=marker)
    assert result.returncode == 0, result.stderr
    plugins = {p["distribution"]: p for p in json.loads(result.stdout)}  # nothing a plugin printed is in stdout
    assert "hello from a plugin" in result.stderr and "raw bytes on fd 1" in result.stderr
    assert plugins["hp-chatty"]["status"] == "loaded" and plugins["hp-chatty"]["heads"] == ["chatty"]
    expected = {
        "hp-exits": "SystemExit(3)",
        "hp-interrupts": "KeyboardInterrupt raised by the plugin",
        "hp-exits-in-hook": "SystemExit('bye')",
        "hp-stringy": "aliases=...) must be a list or tuple of strings",
        "hp-not-a-hook": "register_heads is a int",
        "hp-nanny": "task must be a string",
        "hp-broken-override": "cannot be found",
    }
    for dist, message in expected.items():
        assert plugins[dist]["status"] == "failed", dist
        assert message in plugins[dist]["error"], (dist, plugins[dist]["error"])

    heads = json.loads(run_headreg("heads", "--json", site=site, env=marker).stdout)
    names = {head["name"]: head for head in heads}
    assert BUILTINS | {"chatty", "crashy", "slowpoke"} <= set(names)
    assert not {"x", "y", "z", "stringy", "nanny"} & set(names)
    assert names["seq_cls"]["plugin"] == "headreg", "a broken override leaves the built-in in place"


def test_a_failing_override_does_not_break_existing_bundles_of_that_head(site, marker):
    bundle = tiny_bundle("seq_cls")
    script = f"from headreg.runtime import Predictor\nprint(Predictor({str(bundle)!r}).predict('fine')['label'])\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **marker}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in {"neg", "neu", "pos"}


def test_a_built_in_bundle_loads_without_importing_any_plugin(site, marker, tmp_path):
    bundle = tiny_bundle("seq_cls")
    script = f"from headreg.runtime import Predictor\nPredictor({str(bundle)!r}).predict('x')\nprint('ok')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **marker,
           "HEADREG_TEST_SLEEP": "30"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert not (tmp_path / "marker").exists(), "the (slow) plugin was never imported"
    assert "hello from a plugin" not in out.stderr


def test_serving_a_built_in_bundle_imports_no_plugin(site, marker, tmp_path):
    """headreg serve, its /v1/models (which names each head's task) and a prediction: no plugin is imported."""
    import httpx
    from test_serve import Server

    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **marker,
           "HEADREG_TEST_SLEEP": "30"}
    server = Server(tmp_path, str(tiny_bundle("seq_cls")), env=env, port=0)
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]
        assert models[0]["task"] == "sequence-classification"
        assert httpx.post(f"{server.url}/v1/models/seq_cls/predict", json={"inputs": ["x"]}, timeout=30).status_code == 200
    finally:
        assert server.stop() == 0
    assert not (tmp_path / "marker").exists(), "a plugin was imported by a server of a built-in head"


def test_a_plugin_head_constructor_error_names_head_and_plugin(site, marker):
    script = (
        "from headreg import attach_head\nfrom headreg.testing import tiny_backbone\n"
        "try:\n    attach_head(tiny_backbone('bert'), 'crashy')\nexcept Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **marker}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert "HeadConfigError head 'crashy' from 'hp-crashy 0.1.0'" in out.stdout, out.stdout + out.stderr
    assert "ZeroDivisionError: the plugin's own bug" in out.stdout


def test_load_plugins_naming_no_installed_plugin_warns_with_the_names(site, marker):
    result = run_headreg("heads", "--json", site=site, env={**marker, "HEADREG_LOAD_PLUGINS": "crff"})
    assert result.returncode == 0
    assert {head["name"] for head in json.loads(result.stdout)} == BUILTINS
    warning = [line for line in result.stderr.splitlines() if "crff" in line]
    # One line, no Python file:line or source line.
    assert warning == [warning[0]] and warning[0].startswith("warning: HEADREG_LOAD_PLUGINS names 'crff', which no "
                                                             "installed plugin is called"), result.stderr
    assert "UserWarning" not in result.stderr and "_load_all()" not in result.stderr
    assert "hp-chatty" in result.stderr or "chatty_plugin" in result.stderr


def test_an_unknown_plugin_name_is_fatal_under_strict_mode(site, marker):
    result = run_headreg("heads", "--json", site=site,
                         env={**marker, "HEADREG_LOAD_PLUGINS": "crff", "HEADREG_STRICT_PLUGINS": "1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: HEADREG_LOAD_PLUGINS names 'crff', which no installed plugin is called")
    assert "Fix the name in HEADREG_LOAD_PLUGINS" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_real_ctrl_c_while_a_plugin_imports_is_honoured(site, marker, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    env.update(marker, HEADREG_TEST_SLEEP="60", HEADREG_LOAD_PLUGINS="hp-marker",
               PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", "headreg.cli", "heads", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not (tmp_path / "marker").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert (tmp_path / "marker").exists(), "the plugin never started importing"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    # The README's exit codes: 130 for Ctrl-C, with the one-line error and nothing on stdout (not a plugin failure).
    assert process.returncode == 130, (process.returncode, stderr)
    assert stderr.strip().splitlines()[-1] == b"error: interrupted" and b"Traceback" not in stderr, stderr
    assert stdout == b""
