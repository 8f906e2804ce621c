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


def test_the_command_line_skips_the_final_collection_and_a_caller_of_main_does_not():
    """``headreg`` as a process freezes the collector before it exits (its last pass costs about a second after
    torch is imported, docs/export.md); ``main([...])`` called from Python leaves the caller's collector alone."""
    import gc
    import subprocess
    import sys

    from headreg.cli import main

    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
             "from headreg.cli import main\n"
             "sys.argv = ['headreg', 'heads', '--json']\n"
             "main()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("frozen True")
    json.loads(done.stdout.rstrip()[: -len("frozen True")])  # the command's own output is whole before it
    before = gc.get_freeze_count()
    try:
        main(["heads", "--json"])
    except SystemExit as exit:
        assert exit.code == 0
    assert gc.get_freeze_count() == before
