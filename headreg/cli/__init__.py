"""The ``headreg`` command: a click group over one module per command group, and one output module.

Exit codes: 0 ok, 1 verification/prediction failure, 2 usage error. Every error is one line on stderr,
``error: <what went wrong>; <what to do>``, click's own usage errors included (:mod:`.output`). Heavy libraries
(torch, transformers, onnx) are imported inside the commands that need them, and arguments are checked before
they are imported, so ``headreg --help`` and simple mistakes answer at once.
"""

from __future__ import annotations

import sys

import click

from .._version import __version__
from . import bench, export, listing, predict, serve
from .output import EXIT_FAILURE, EXIT_OK, fail, usage_error

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT, epilog="""\b
Examples:
  headreg heads
  headreg export ./my-model -o ./bundle
  headreg predict ./bundle "I loved this film."
Run 'headreg COMMAND --help' for a command's options and examples.""")
@click.version_option(__version__, prog_name="headreg")
def cli() -> None:
    """Attach task heads to Hugging Face encoders, export verified ONNX bundles, serve them without torch."""


for command in (listing.heads, listing.plugins, predict.predict, bench.bench, serve.serve, export.export,
                export.verify, export.convert):
    cli.add_command(command)


def _click_error(exc: click.ClickException) -> str:
    """click's message in headreg's style: ``what; what to do``."""
    message = exc.format_message().rstrip(".")
    message = message[:1].lower() + message[1:]
    context = getattr(exc, "ctx", None)
    if isinstance(exc, click.NoSuchOption) and context is not None and context.command.name == "predict":
        from ..runtime.inputs import RUNTIME_OPTIONS

        name = exc.option_name.lstrip("-").replace("-", "_")
        if name in RUNTIME_OPTIONS:  # a head's per-call option, typed as a flag
            return f"no such option '{exc.option_name}'; per-call options go through --option: --option {name}=VALUE"
    if isinstance(exc, click.UsageError) and context is not None:
        if message.endswith("?"):  # "no such option '--x'. Did you mean '--y'?" ends a sentence already
            return f"{message} See '{context.command_path} --help'"
        return f"{message}; see '{context.command_path} --help'"
    return message


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one error style and exit code 2 for every usage error, click's included."""
    from ..errors import PluginError, PluginSettingError, UnknownHeadError

    _one_line_warnings()
    try:
        code = cli.main(args=argv, prog_name="headreg", standalone_mode=False)
    except click.UsageError as exc:
        usage_error(_click_error(exc))
    except click.ClickException as exc:  # bad file contents and the like: click's other errors
        fail(_click_error(exc), exc.exit_code)
    except click.Abort:
        fail("interrupted", 130)
    except (UnknownHeadError, PluginSettingError) as exc:  # the user's to fix (a setting: a plugin not installed)
        usage_error(str(exc))
    except PluginError as exc:
        fail(str(exc), EXIT_FAILURE)
    finally:
        if argv is None:  # the process's own command line: it exits next
            skip_final_collection()
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _one_line_warnings() -> None:
    """headreg's own warnings (PluginWarning) as ``warning: ...`` on stderr, without Python's file:line and source."""
    import warnings

    from ..errors import PluginWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PluginWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def skip_final_collection() -> None:
    """Spare an exiting process the garbage collector's last pass over every object it holds.

    After importing torch and transformers that pass takes about a second on a 2-core machine, after the
    command's work is done (measured in benchmarks/export_speed.py). Frozen objects are left to the OS; atexit
    handlers, weakref finalizers and module teardown still run, and headreg closes its files explicitly.
    Called only where the process exits next: a caller of ``main([...])`` keeps collecting.
    """
    import gc

    gc.freeze()

