"""The ``headreg`` command. Exit codes: 0 ok, 1 verification/prediction failure, 2 usage error.

Heavy libraries (torch, transformers, onnx) are imported inside the commands that need them, so
``headreg heads`` and ``headreg --help`` stay fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def console(stderr: bool = False):
    import shutil

    from rich.console import Console

    # Piped output gets a wide table rather than rich's 80-column default.
    return Console(stderr=stderr, highlight=False, width=shutil.get_terminal_size((160, 24)).columns)


def usage_error(message: str) -> None:
    """Print a usage error and exit 2 (bad arguments, missing files, unknown heads)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headreg")
def cli() -> None:
    """Attach task heads to Hugging Face encoders, export verified ONNX bundles, serve them without torch."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@click.option("--filter", "pattern", default="*", show_default=True, help="Wildcard on names and aliases.")
@click.option("--task", default=None, help="Only heads of this task.")
@click.option("--plugin", default=None, help="Only heads from this distribution ('headreg' = built-ins).")
def heads(as_json: bool, pattern: str, task: str | None, plugin: str | None) -> None:
    """List the installed heads, built-in and from plugins."""
    from .registry import list_heads

    specs = list_heads(pattern, task=task, plugin=plugin)
    if as_json:
        emit_json([spec.as_dict() for spec in specs])
        return
    from rich.table import Table

    table = Table(title=f"{len(specs)} head(s)", title_justify="left")
    for column in ("name", "aliases", "task", "plugin", "version", "description"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        table.add_row(spec.name, ", ".join(spec.aliases), spec.task, spec.plugin, spec.version, spec.description)
    console().print(table)
    _warn_failed_plugins()


def _warn_failed_plugins() -> None:
    from .plugins import plugin_infos

    failed = [info for info in plugin_infos() if info.status == "failed"]
    if failed:
        names = ", ".join(f"{info.distribution}" for info in failed)
        click.echo(f"warning: {len(failed)} plugin(s) failed to load ({names}); see 'headreg plugins'", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def plugins(as_json: bool) -> None:
    """List plugins: loaded, failed (with the error) and disabled."""
    from .plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        emit_json([info.as_dict() for info in infos])
        return
    from rich.table import Table

    table = Table(title=f"{len(infos)} plugin(s)", title_justify="left")
    for column in ("entry point", "distribution", "version", "status", "heads", "error"):
        table.add_column(column, overflow="fold")
    styles = {"loaded": "green", "failed": "red", "disabled": "yellow"}
    for info in infos:
        status = f"[{styles.get(info.status, '')}]{info.status}[/]"
        table.add_row(info.name, info.distribution, info.version, status, ", ".join(info.heads), info.error or "")
    console().print(table)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; click's own usage errors already exit with 2."""
    from .errors import PluginError, UnknownHeadError

    try:
        cli.main(args=argv, prog_name="headreg", standalone_mode=True)
    except UnknownHeadError as exc:
        usage_error(str(exc))
    except PluginError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)


if __name__ == "__main__":
    main()
