"""``headreg heads`` and ``headreg plugins``: what is installed, without importing torch."""

from __future__ import annotations

import click

from .output import cell, console, emit_json, plain


@click.command(short_help="List the installed heads, built-in and from plugins.", epilog="""\b
Examples:
  headreg heads
  headreg heads --filter '*cls' --json
  headreg heads --plugin headreg-plugin-crf""")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@click.option("--filter", "pattern", default="*", show_default=True, help="Wildcard on names and aliases.")
@click.option("--task", default=None, help="Only heads of this task.")
@click.option("--plugin", default=None, help="Only heads from this distribution ('headreg' = built-ins).")
def heads(as_json: bool, pattern: str, task: str | None, plugin: str | None) -> None:
    """List the installed heads, built-in and from plugins: names and aliases for --head, task, origin."""
    from ..installed import list_heads

    specs = list_heads(pattern, task=task, plugin=plugin)
    if as_json:
        emit_json([spec.as_dict() for spec in specs])
        return
    from rich.table import Table

    out = console()
    table = Table(title=f"{len(specs)} head(s)", title_justify="left")
    # Names, tasks and distributions are never broken inside a word; aliases and descriptions wrap at words.
    for column in ("name", "aliases", "task", "plugin", "version", "description"):
        table.add_column(column, no_wrap=column not in ("aliases", "description"))
    for spec in specs:
        table.add_row(*map(cell, (spec.name, ",\n".join(spec.aliases), spec.task, spec.plugin, spec.version,
                                  spec.description)))
    if table.__rich_measure__(out, out.options).minimum <= out.width:
        out.print(table)
    else:  # too narrow for the table without breaking words: one block per head
        from rich.padding import Padding
        from rich.text import Text

        out.print(f"{len(specs)} head(s)")
        for spec in specs:
            aliases = f" ({', '.join(spec.aliases)})" if spec.aliases else ""
            out.print()
            out.print(Text.assemble((plain(spec.name), "bold"), plain(aliases)))
            out.print(Padding(cell(f"{spec.description}\ntask: {spec.task}; from {spec.plugin} {spec.version}"),
                              (0, 0, 0, 2)))
    _warn_failed_plugins()


def _warn_failed_plugins() -> None:
    from ..plugins import plugin_infos

    failed = [info for info in plugin_infos() if info.status == "failed"]
    if failed:
        names = ", ".join(f"{info.distribution}" for info in failed)
        click.echo(f"warning: {len(failed)} plugin(s) failed to load ({names}); see 'headreg plugins'", err=True)


@click.command(short_help="List plugins: loaded, failed (with the error) and disabled.", epilog="""\b
Examples:
  headreg plugins
  HEADREG_LOAD_PLUGINS=crf headreg plugins     # allowlist
  HEADREG_DISABLE_PLUGINS=ordinal headreg plugins""")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def plugins(as_json: bool) -> None:
    """List plugins: loaded, failed (with the error) and disabled (HEADREG_LOAD_PLUGINS / HEADREG_DISABLE_PLUGINS)."""
    from ..plugins import plugin_infos

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
        status = cell(info.status)
        status.stylize(styles.get(info.status, ""))
        table.add_row(cell(info.name), cell(info.distribution), cell(info.version), status, cell(", ".join(info.heads)),
                      cell(info.error or ""))
    console().print(table)
