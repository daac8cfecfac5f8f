"""Command-line interface: parse → library call → print. No maths here.

``app``, the entry point and the shared helpers live here; each submodule registers its
commands on ``app``; the model options are defined once in ``options.py``.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from ..exceptions import MlipdoeError
from ..progress import Progress

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # the rich help panels print a <bool> type column for every flag
    help="Offline optimal design of GAP training sets: choose which configurations to send to DFT, "
    "before running any DFT.",
)
out = Console()
err = Console(stderr=True)


class RichProgress(Progress):
    """Progress bars on stderr with frames/s and atoms/s."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    @contextmanager
    def stage(self, name: str, total: int):
        if not self.enabled:
            yield lambda units=1, atoms=0: None
            return
        atoms_done = [0]
        with RichBar(
            TextColumn(f"[bold]{name:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"), console=err, transient=False,
        ) as bar:
            task = bar.add_task(name, total=total, rate="")

            def advance(units=1, atoms=0):
                atoms_done[0] += atoms
                bar.advance(task, units)
                elapsed = bar.tasks[0].elapsed or 0.0
                if elapsed > 0:
                    done = bar.tasks[0].completed
                    unit = "picks" if name == "selection" else "frames"
                    rate = f"{done / elapsed:,.1f} {unit}/s"
                    if atoms_done[0]:
                        rate += f"  {atoms_done[0] / elapsed:,.0f} atoms/s"
                    bar.update(task, rate=rate)

            yield advance


def _progress(quiet: bool) -> Progress:
    return RichProgress(enabled=not quiet and sys.stderr.isatty())


def _print_picks(result, limit: int = 30) -> None:
    table = Table(title=f"{len(result.selected)} frames selected ({result.record.criterion})")
    for col in ("rank", "pool index", "source", "atoms", "config_type", "gain", "value"):
        table.add_column(col, justify="right" if col not in ("source", "config_type") else "left")
    for rank, (idx, gain, value) in enumerate(zip(result.selected, result.gains, result.values), start=1):
        if rank > limit:
            table.add_row("…", "", "", "", "", "", "")
            break
        info = result.pool.info[idx]
        table.add_row(str(rank), str(idx), f"{Path(info.source).name}:{info.index_in_file}", str(info.n_atoms),
                      str(info.config_type or ""), f"{gain:.4g}", f"{value:.6g}")
    out.print(table)
    out.print(f"final value ({result.record.criterion}): {result.value:.6g}   log det K_MM: "
              f"{result.record.log_det_K_MM:.6g}   M = {result.model.M}")


def _write_outputs(result, output: Path, record_path: Optional[Path]) -> None:
    """The selected frames (``-o``) and the design record (``--record``), each written atomically;
    both paths are checked before either is written."""
    from ..api import selected_frames
    from ..atomic import check_output
    from ..design import write_record
    from ..generate import write_frames

    check_output(output, what="-o")
    if record_path is not None:
        check_output(record_path, what="--record")
    write_frames(selected_frames(result), output, what="-o")
    if record_path is not None:
        write_record(result.record, record_path)


def print_notes(record) -> None:
    """Each note of a design record (what the tool changed or ignored) as ``note: …`` on stderr."""
    for note in record.notes:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def pool_for_record(record, pool: Optional[List[Path]], progress: Progress | None = None):
    """The pool of a design record: ``--pool`` if given, else the files the record names.

    The record's files are used when they are still at their paths with the recorded
    sha256 and frame counts; otherwise one line asks for ``--pool``.
    """
    from ..api import check_pool_matches
    from ..exceptions import InputError
    from ..pool import read_pool

    kwargs = {} if progress is None else {"progress": progress}
    if pool:
        the_pool = read_pool([str(p) for p in pool], **kwargs)
        check_pool_matches(record, the_pool)
        return the_pool
    paths = [str(f.get("path", "")) for f in record.pool]
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or missing:
        raise InputError(f"the record's pool file {missing[0] if missing else '(none)'} is not there; "
                         f"give the pool with --pool")
    the_pool = read_pool(paths, **kwargs)
    try:
        check_pool_matches(record, the_pool)
    except InputError:
        raise InputError(f"the record's pool files ({', '.join(paths)}) have changed since the design (sha256 or "
                         f"frame count); give the pool it was made on with --pool") from None
    return the_pool


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        out.print(f"mlipdoe {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print the version and exit."),
):
    """Offline optimal design of GAP training sets: choose which configurations to send to DFT, before running
    any DFT."""


def _usage_line(exc) -> str:
    """One line for a command-line usage error: the message and where to find help."""
    from typer._click.exceptions import NoArgsIsHelpError

    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, NoArgsIsHelpError):
        message = "missing arguments"
    else:
        message = " ".join(exc.format_message().split())
        message = (message[:1].lower() + message[1:]).rstrip(".")
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"error: {message}{where}"


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point. Bad input (a usage error or a library input error) is one line on stderr and
    exit code 2; ``typer.Exit`` keeps its code; Ctrl-C is exit 130."""
    from typer import TyperException

    warnings.simplefilter("default")
    try:
        code = app(args=argv, prog_name="mlipdoe", standalone_mode=False)
    except MlipdoeError as exc:
        err.print(f"error: {' '.join(str(exc).split())}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except TyperException as exc:  # typer's bundled click: usage errors, bad values, unreadable files
        err.print(_usage_line(exc), highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # a file system refusal (permissions, full disk) is not a bug of the caller's input
        err.print(f"error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"error: {exc}",
                  highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted", highlight=False)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


from . import select as _select  # noqa: E402,F401  (registers generate, select, score, verify, demo)
from . import fit as _fit  # noqa: E402,F401  (registers fit, evaluate, benchmark)
from . import assess as _assess  # noqa: E402,F401  (registers assess, grade)
from . import store as _store  # noqa: E402,F401  (registers store build)
