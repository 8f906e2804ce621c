"""The headreg command's registry views and exit codes."""

import json

from conftest import run_headreg


def test_heads_table_lists_builtins_with_their_columns():
    result = run_headreg("heads")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "description" in line)
    for column in ("name", "aliases", "task", "plugin", "version", "description"):
        assert column in header
    for name in ("seq_cls", "multi_label", "regression", "token_cls"):
        assert name in result.stdout


def test_heads_json_is_machine_readable_only():
    result = run_headreg("heads", "--json", "--filter", "*cls")
    assert result.returncode == 0
    heads = json.loads(result.stdout)
    assert [h["name"] for h in heads] == ["seq_cls", "token_cls"]
    assert heads[1]["aliases"] == ["token-classification", "ner"]


def test_plugins_json_reports_the_builtins_as_loaded():
    plugins = json.loads(run_headreg("plugins", "--json").stdout)
    builtin = next(p for p in plugins if p["distribution"] == "headreg")
    assert builtin["status"] == "loaded"
    assert set(builtin["heads"]) == {"seq_cls", "multi_label", "regression", "token_cls"}


def test_usage_errors_exit_2():
    assert run_headreg("no-such-command").returncode == 2
    assert run_headreg("heads", "--no-such-option").returncode == 2


def test_version():
    from headreg import __version__

    result = run_headreg("--version")
    assert result.returncode == 0 and __version__ in result.stdout
