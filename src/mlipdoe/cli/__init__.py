"""Command-line interface: parse → library call → print. No maths here.

``app`` and the shared helpers live here; each submodule registers its commands on
``app`` (``select.py``: generate/select/verify/demo).
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
    no_args_is_help=True,
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


def _soap(cutoff, width, n_max, l_max, atom_sigma):
    from ..descriptors import SOAP

    return SOAP(cutoff=cutoff, cutoff_transition_width=width, n_max=n_max, l_max=l_max, atom_sigma=atom_sigma)


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
    from ..api import selected_frames
    from ..design import write_record
    from ..generate import write_frames

    write_frames(selected_frames(result), output)
    if record_path is not None:
        write_record(result.record, record_path)


SOAP_OPTS = dict(
    soap_cutoff=typer.Option(5.0, help="SOAP cutoff radius (Å)."),
    soap_width=typer.Option(0.5, help="SOAP cutoff transition width (Å)."),
    n_max=typer.Option(8, help="SOAP radial functions."),
    l_max=typer.Option(6, help="SOAP maximum angular momentum."),
    atom_sigma=typer.Option(0.5, help="SOAP Gaussian atom width (Å)."),
)


def main() -> None:
    """Entry point: library errors become one line on stderr and exit code 2."""
    warnings.simplefilter("default")
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except MlipdoeError as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise




from . import assess as _assess  # noqa: E402,F401  (registers assess, grade)
from . import fit as _fit  # noqa: E402,F401  (registers fit/evaluate/benchmark)
from . import select as _select  # noqa: E402,F401  (registers commands)
from . import store as _store  # noqa: E402,F401  (registers store build)
