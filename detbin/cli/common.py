"""What every command shares: the typer app, the consoles, common options, one-line errors.

Known errors (:class:`~detbin.core.errors.DetbinError`) print one red line on stderr and exit 1;
so does an ``OSError`` that names a file (a full disk, a read-only folder) which no layer below
turned into a ``DetbinError``. ``DETBIN_DEBUG=1`` shows the traceback instead. Messages are printed
as literal text, never as rich markup: they carry paths and data (``[x, y, width, height]``, a
folder called ``[red]``). torch is imported inside commands only, so ``detbin --help`` is fast.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from detbin.core.errors import DetbinError, TrainingInterrupted, os_error_message

__all__ = ["app", "recipes_app", "data_app", "out", "err", "handles_errors", "one_line", "interactive", "fmt_ap"]

# Plain (click) help: typer's rich panels print a "<bool>" metavar beside every flag, --help included.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Turn real-valued object detectors into 1-bit students.")
recipes_app = typer.Typer(help="Installed recipes and their shipped YAML files.", invoke_without_command=True,
                          rich_markup_mode=None)
data_app = typer.Typer(help="Data sets: the embedded synthetic benchmark.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(recipes_app, name="recipes")
app.add_typer(data_app, name="data")

# Piped output keeps whole table rows (rich would wrap them at 80 columns).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])

# Shared options, declared once.
DataOpt = Annotated[Path | None, typer.Option("--data", help="Local data root (VOC layout or synthetic set); never downloaded.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Plain log lines instead of a progress bar.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: --set train.epochs=2 (repeatable).")]
ProjectOpt = Annotated[Path, typer.Option("--project", help="Parent folder of run folders.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Run folder name (auto-incremented if taken).")]
ExistOkOpt = Annotated[bool, typer.Option("--exist-ok", help="Reuse the run folder if it exists.")]


def one_line(label: str, style: str, message: object) -> Text:
    """``label message`` as literal text (no markup parsing), folded onto one line."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return Text.assemble((label, style), " ", text)


def handles_errors(fn: F) -> F:
    """Turn DetbinError (and OSError naming a file) into one line on stderr and exit code 1.

    ``DETBIN_DEBUG=1`` re-raises, showing the traceback.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as exc:  # Ctrl-C: state saved, leave like an interrupted program
            err.print(one_line("interrupted:", "bold yellow", exc), soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:  # Ctrl-C outside training (eval, profile): nothing to save
            err.print(one_line("interrupted:", "bold yellow", "stopped by Ctrl-C"), soft_wrap=True)
            raise typer.Exit(130) from None
        except (DetbinError, OSError) as exc:
            known = isinstance(exc, DetbinError)
            if os.environ.get("DETBIN_DEBUG") == "1" or not (known or exc.filename is not None):
                raise  # an OSError without a file is not about the user's paths: a bug, show it
            message = exc if known else os_error_message(exc)
            err.print(one_line("error:", "bold red", message), soft_wrap=True)
            raise typer.Exit(1) from None
    return wrapper  # type: ignore[return-value]


def fmt_ap(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}"


def setup_logging(verbose: bool = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def interactive(no_progress: bool) -> bool:
    """Rich progress bars only on a terminal, outside CI, unless ``--no-progress``."""
    return not no_progress and err.is_terminal and not os.environ.get("CI")


def version_callback(value: bool) -> None:
    if value:
        from detbin import __version__

        out.print(f"detbin {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                               help="Show the version and exit.")] = False) -> None:
    """detbin: 1-bit object detectors, distilled from real-valued teachers by pluggable recipes."""
    setup_logging()
