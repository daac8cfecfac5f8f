"""Commands: fit, evaluate, benchmark (label-backed validation)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..exceptions import InputError
from . import SOAP_OPTS, _soap, app, out


def _read_frames(paths):
    from ..pool import read_pool

    return read_pool([str(p) for p in paths]).frames


@app.command()
def fit(
    train: List[Path] = typer.Argument(..., help="Labelled training frames (any file(s) ASE reads)."),
    output: Path = typer.Option(..., "-o", "--output", help="Model directory to write."),
    record: Optional[Path] = typer.Option(None, "--record", help="Design record: hypers and sparse points."),
    pool: Optional[List[Path]] = typer.Option(None, "--pool", help="The record's pool file(s) (for its sparse points)."),
    engine: str = typer.Option("builtin", help="builtin (sparse GPR of the spec) or gap_fit (quippy-ase)."),
    energy_key: str = typer.Option("energy", help="info key of the energy when there is no calculator."),
    forces_key: str = typer.Option("force", help="arrays key of the forces when there is no calculator."),
    forces: bool = typer.Option(True, "--forces/--no-forces", help="Fit forces when present."),
    n_sparse: int = typer.Option(100, help="Without --record: CUR sparse points per species from TRAIN."),
    sigma_energy: Optional[float] = typer.Option(None, help="σ_E (eV/atom); default the record's."),
    sigma_force: Optional[float] = typer.Option(None, help="σ_F (eV/Å); default the record's."),
    zeta: float = typer.Option(4, help="Kernel power ζ (without --record)."),
    soap_cutoff: float = SOAP_OPTS["soap_cutoff"],
    soap_width: float = SOAP_OPTS["soap_width"],
    n_max: int = SOAP_OPTS["n_max"],
    l_max: int = SOAP_OPTS["l_max"],
    atom_sigma: float = SOAP_OPTS["atom_sigma"],
):
    """Fit GAP (built-in sparse GPR, or the real gap_fit) on labelled frames."""
    from dataclasses import replace

    from ..api import as_pool, check_pool_matches
    from ..descriptors import SOAP, make_descriptor
    from ..design import read_record
    from ..fit import fit_gap_fit, fit_gpr, read_labels
    from ..hypers import Noise
    from ..model import build_model, sparse_points_at
    from ..model.kernels import Kernel

    if engine not in ("builtin", "gap_fit"):
        raise InputError(f"--engine must be builtin or gap_fit, got {engine!r}")
    frames = _read_frames(train)
    labels = read_labels(frames, energy_key=energy_key, forces_key=forces_key)
    if record is not None:
        if not pool:
            raise InputError("--record needs --pool (the files the design was chosen from)")
        rec = read_record(record)
        the_pool = as_pool([str(p) for p in pool])
        check_pool_matches(rec, the_pool)
        soap = SOAP.from_dict(rec.descriptor)
        kernel = Kernel.from_dict(rec.kernel)
        noise = Noise.from_dict(rec.noise)
        sparse = sparse_points_at(the_pool.frames, rec.sparse_points, make_descriptor(soap))
        sparse_frames, sparse_locations = the_pool.frames, rec.sparse_points
    else:
        soap = _soap(soap_cutoff, soap_width, n_max, l_max, atom_sigma)
        kernel = Kernel(zeta=zeta)
        noise = Noise()
        model = build_model(frames, soap=soap, kernel=kernel, n_sparse=n_sparse)
        soap, sparse = model.soap, model.sparse
        sparse_frames, sparse_locations = frames, sparse.location_list()
    if sigma_energy is not None:
        noise = replace(noise, energy=sigma_energy)
    if sigma_force is not None:
        noise = replace(noise, force=sigma_force)
    if engine == "builtin":
        model = fit_gpr(frames, labels, soap=soap, kernel=kernel, noise=noise, sparse=sparse, use_forces=forces)
        model.save(output)
        out.print(f"fitted M = {model.M} on {len(frames)} frames ({', '.join(model.observations)}), "
                  f"e0 = {model.e0:.6f} eV/atom; wrote {output}")
    else:
        gm = fit_gap_fit(frames, labels, soap=soap, kernel=kernel, noise=noise, sparse_frames=sparse_frames,
                         sparse_locations=sparse_locations, output=output, use_forces=forces)
        out.print(f"gap_fit done in {gm.meta['fit_seconds']} s; wrote {output}/gp.xml")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model directory written by `mlipdoe fit`."),
    test: List[Path] = typer.Argument(..., help="Labelled test frames."),
    energy_key: str = typer.Option("energy", help="info key of the energy when there is no calculator."),
    forces_key: str = typer.Option("force", help="arrays key of the forces when there is no calculator."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Parity plot (PNG) to write."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Errors as JSON."),
):
    """Energy RMSE/MAE per atom and force RMSE/MAE per component, per config_type."""
    from ..design import atomic_write_text
    from ..fit import evaluate as run_evaluate
    from ..fit import load_model, parity_plot, read_labels

    frames = _read_frames(test)
    labels = read_labels(frames, energy_key=energy_key, forces_key=forces_key)
    m = load_model(model)
    pred = m.predict(frames, forces=labels.forces is not None)
    table = run_evaluate(pred, labels)
    t = Table(title=f"errors of {model} on {len(frames)} frames")
    for col in ("config_type", "frames", "E RMSE (meV/atom)", "E MAE (meV/atom)", "F RMSE (eV/Å)", "F MAE (eV/Å)"):
        t.add_column(col, justify="left" if col == "config_type" else "right")
    for r in table.rows:
        t.add_row(r["group"], str(r["n_frames"]), f"{1000 * r['energy_rmse']:.3f}", f"{1000 * r['energy_mae']:.3f}",
                  f"{r['force_rmse']:.4f}", f"{r['force_mae']:.4f}")
    out.print(t)
    if plot is not None:
        parity_plot(pred, labels, plot, title=str(model))
        out.print(f"wrote {plot}")
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(table.rows, indent=1))


@app.command()
def benchmark(
    pool: List[Path] = typer.Argument(..., help="Labelled candidate pool (labels hidden from the selectors)."),
    test: List[Path] = typer.Option(..., "--test", help="Labelled held-out test frames."),
    off_sample: Optional[List[str]] = typer.Option(None, "--off-sample", help="NAME=PATH, extra test sets."),
    budgets: str = typer.Option("10,20", help="Comma-separated numbers of frames."),
    strategies: str = typer.Option("random,fps,cur,d,i,maximin,d_forces,i_forces",
                                   help="Comma-separated; unavailable ones are skipped with a note."),
    n_random: int = typer.Option(5, help="Seeds of the random baseline."),
    n_sparse: int = typer.Option(100, help="Sparse points per species (CUR on the pool)."),
    sigma_energy: float = typer.Option(0.002, help="σ_E (eV/atom)."),
    sigma_force: float = typer.Option(0.1, help="σ_F (eV/Å)."),
    forces: bool = typer.Option(True, "--forces/--no-forces", help="Fit forces when present."),
    energy_key: str = typer.Option("energy"),
    forces_key: str = typer.Option("force"),
    output: Path = typer.Option(Path("benchmark"), "-o", "--output", help="Directory for CSV, PNG, summary."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Markdown file whose section to update."),
    section: str = typer.Option("benchmark", help="Section name inside --markdown."),
    title: str = typer.Option("", help="Title of the summary."),
    seed: int = typer.Option(0),
    soap_cutoff: float = SOAP_OPTS["soap_cutoff"],
    soap_width: float = SOAP_OPTS["soap_width"],
    n_max: int = SOAP_OPTS["n_max"],
    l_max: int = SOAP_OPTS["l_max"],
    atom_sigma: float = SOAP_OPTS["atom_sigma"],
):
    """Learning curves: select (labels hidden) → fit → evaluate, per strategy and budget."""
    from ..bench import (
        BenchmarkConfig,
        run_benchmark,
        summary_markdown,
        update_markdown_section,
        write_outputs,
    )
    from ..hypers import Noise

    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--budgets must be comma-separated integers, got {budgets!r}") from None
    tests = {"test": _read_frames(test)}
    for item in off_sample or []:
        if "=" not in item:
            raise InputError(f"--off-sample must look like NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        tests[name] = _read_frames([path])
    config = BenchmarkConfig(
        budgets=budget_list, strategies=[s.strip() for s in strategies.split(",") if s.strip()], n_random=n_random,
        soap=_soap(soap_cutoff, soap_width, n_max, l_max, atom_sigma), noise=Noise(energy=sigma_energy, force=sigma_force),
        n_sparse=n_sparse, seed=seed, use_forces=forces,
    )
    result = run_benchmark(_read_frames(pool), tests, config, energy_key=energy_key, forces_key=forces_key,
                           log=lambda m: out.print(m, highlight=False))
    command = "mlipdoe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_outputs(result, output, title=title, command=command)
    text = summary_markdown(result, title=title, command=command)
    out.print(text, highlight=False, markup=False)
    if markdown is not None:
        update_markdown_section(markdown, section, text)
    out.print(f"wrote {', '.join(str(p) for p in paths.values())}")
