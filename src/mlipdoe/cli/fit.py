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
from . import app, out, pool_for_record
from .options import ModelOptions, given_options, model_options, split_list

ENERGY_KEY = typer.Option(None, "--energy-key",
                          help="info key of the energy when there is no calculator [default: energy]; must exist.")
FORCES_KEY = typer.Option(None, "--forces-key",
                          help="arrays key of the forces when there is no calculator [default: force]; must exist.")
FORCES = typer.Option(True, "--forces/--no-forces",
                      help="Fit forces when the frames have them (all frames or none), or energies only.")


def _read_frames(paths):
    from ..pool import read_pool

    return read_pool([str(p) for p in paths]).frames


def _label_keys(energy_key, forces_key, forces: bool) -> dict:
    """read_labels arguments from --energy-key/--forces-key/--forces: a given key must exist."""
    if forces_key is not None and not forces:
        raise InputError("--forces-key is not used with --no-forces; drop one of them")
    named = tuple(n for n, key in (("energy", energy_key), ("forces", forces_key)) if key is not None)
    return {"energy_key": energy_key or "energy", "forces_key": (forces_key or "force") if forces else None,
            "named": named}


@app.command()
@model_options("soap", "kernel", "sparse", "noise")
def fit(
    ctx: typer.Context,
    train: List[Path] = typer.Argument(..., help="Labelled training frames (any file(s) ASE reads)."),
    output: Path = typer.Option(..., "-o", "--output", help="Model folder to write (created; its parent must exist)."),
    record: Optional[Path] = typer.Option(
        None, "--record", help="Design record: hypers and sparse points (the model options then come from it)."),
    pool: Optional[List[Path]] = typer.Option(
        None, "--pool", help="With --record: its pool file(s) (default: the files the record names, if unchanged)."),
    engine: str = typer.Option("builtin", help="builtin (sparse GPR of the spec) or gap_fit (quippy-ase)."),
    energy_key: Optional[str] = ENERGY_KEY,
    forces_key: Optional[str] = FORCES_KEY,
    forces: bool = FORCES,
    model: ModelOptions = None,
):
    """Fit GAP (built-in sparse GPR, or the real gap_fit) on labelled frames."""
    from dataclasses import replace

    from ..atomic import atomic_folder, check_output
    from ..descriptors import SOAP, make_descriptor
    from ..design import read_record
    from ..fit import fit_gap_fit, fit_gpr, read_labels
    from ..hypers import LINEAR_BACKENDS, Noise
    from ..model import build_model, sparse_points_at
    from ..model.kernels import Kernel

    engine = engine.strip().lower()
    if engine not in ("builtin", "gap_fit"):
        raise InputError(f"--engine must be builtin or gap_fit, got {engine!r}")
    model.refuse(["--sigma-virial"], "by fit (energies and forces)")
    if not forces:
        model.refuse(["--sigma-force"], "with --no-forces")
    if record is None and pool:
        raise InputError("--pool is only used with --record")
    check_output(output, what="-o", folder=True)
    frames = _read_frames(train)
    labels = read_labels(frames, **_label_keys(energy_key, forces_key, forces))
    if record is not None:
        model.refuse(model.given_of("soap", "kernel", "sparse"), "with --record (the record's hypers and sparse "
                     "points are used)")
        rec = read_record(record)
        the_pool = pool_for_record(rec, pool)
        if rec.descriptor.get("backend") in LINEAR_BACKENDS:
            raise InputError("this record is of a linear model (SNAP, ACE or per-atom features): fit it with its "
                             "own trainer (FitSNAP, pacemaker, …) on the selected frames; mlipdoe fit trains GAP models")
        if rec.descriptor.get("backend") == "quippy":
            _fit_gap_exact(rec, the_pool, frames, labels, output=output, engine=engine, forces=forces, model=model)
            return
        soap = SOAP.from_dict(rec.descriptor)
        kernel = Kernel.from_dict(rec.kernel)
        noise = Noise.from_dict(rec.noise)
        for option, field in (("--sigma-energy", "energy"), ("--sigma-force", "force")):
            if option in model.given:
                noise = replace(noise, **{field: model.values[f"sigma_{field}"]})
        sparse = sparse_points_at(the_pool.frames, rec.sparse_points, make_descriptor(soap))
        sparse_frames, sparse_locations = the_pool.frames, rec.sparse_points
    else:
        soap, kernel, noise = model.soap, model.kernel, model.noise
        built = build_model(frames, soap=soap, kernel=kernel, n_sparse=model.n_sparse,
                            sparse_method=model.sparse_method)
        soap, sparse = built.soap, built.sparse
        sparse_frames, sparse_locations = frames, sparse.location_list()
    with atomic_folder(output, what="-o") as tmp:
        if engine == "builtin":
            gpr = fit_gpr(frames, labels, soap=soap, kernel=kernel, noise=noise, sparse=sparse, use_forces=forces)
            gpr.save(tmp)
        else:
            gm = fit_gap_fit(frames, labels, soap=soap, kernel=kernel, noise=noise, sparse_frames=sparse_frames,
                             sparse_locations=sparse_locations, output=tmp, use_forces=forces)
    if engine == "builtin":
        out.print(f"fitted M = {gpr.M} on {len(frames)} frames ({', '.join(gpr.observations)}), "
                  f"e0 = {gpr.e0:.6f} eV/atom; wrote {output}")
    else:
        out.print(f"gap_fit done in {gm.meta['fit_seconds']} s; wrote {output}/gp.xml")


def _fit_gap_exact(rec, the_pool, frames, labels, *, output, engine: str, forces: bool, model: ModelOptions) -> None:
    """``fit --record`` of a design on gap_fit arguments: the record's model, either engine."""
    from ..api import model_from_record
    from ..atomic import atomic_folder
    from ..fit import fit_gap_exact, fit_gap_fit_exact

    model.refuse(model.given_of("noise"), "with a record of gap_fit arguments (its sigmas are used)")
    gap_model = model_from_record(rec, the_pool)
    with atomic_folder(output, what="-o") as tmp:
        if engine == "builtin":
            fitted = fit_gap_exact(frames, labels, gap_model, use_forces=forces)
            fitted.save(tmp)
        else:
            fitted = fit_gap_fit_exact(frames, labels, gap_model, output=tmp, use_forces=forces)
    if engine == "builtin":
        out.print(f"fitted M = {fitted.M} on {len(frames)} frames ({', '.join(fitted.observations)}) on the "
                  f"record's gap_fit model, e0 = {fitted.e0:.6f} eV/atom; wrote {output}")
    else:
        out.print(f"gap_fit done in {fitted.meta['fit_seconds']} s with the record's model; wrote {output}/gp.xml")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model folder written by `mlipdoe fit`."),
    test: List[Path] = typer.Argument(..., help="Labelled test frames."),
    energy_key: Optional[str] = ENERGY_KEY,
    forces_key: Optional[str] = FORCES_KEY,
    forces: bool = typer.Option(True, "--forces/--no-forces", help="Evaluate forces when the frames have them (all frames or none)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Parity plot (PNG) to write."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Errors as JSON."),
):
    """Energy RMSE/MAE per atom and force RMSE/MAE per component, per config_type."""
    from ..atomic import check_output
    from ..design import atomic_write_text
    from ..fit import evaluate as run_evaluate
    from ..fit import load_model, parity_plot, read_labels

    if plot is not None:
        check_output(plot, what="--plot")
    if json_out is not None:
        check_output(json_out, what="--json")
    frames = _read_frames(test)
    labels = read_labels(frames, **_label_keys(energy_key, forces_key, forces))
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
        out.print(f"wrote {json_out}")


@app.command()
@model_options("soap", "kernel", "sparse", "noise", "gap")
def benchmark(
    ctx: typer.Context,
    pool: List[Path] = typer.Argument(..., help="Labelled candidate pool (labels hidden from the selectors)."),
    test: List[Path] = typer.Option(..., "--test", help="Labelled held-out test frames."),
    off_sample: Optional[List[str]] = typer.Option(None, "--off-sample", help="NAME=PATH, extra test sets."),
    budgets: str = typer.Option("10,20", help="Comma-separated numbers of frames."),
    strategies: str = typer.Option("random,fps,cur,quests,d,i,maximin,d_forces,i_forces",
                                   help="Comma-separated; unavailable ones are skipped with a note."),
    n_random: int = typer.Option(5, help="Seeds of the random baseline."),
    forces: bool = FORCES,
    energy_key: Optional[str] = ENERGY_KEY,
    forces_key: Optional[str] = FORCES_KEY,
    output: Path = typer.Option(Path("benchmark"), "-o", "--output",
                                help="Folder for CSV, PNG, summary (created; its parent must exist)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Markdown file whose section to update."),
    section: str = typer.Option("benchmark", help="Section name inside --markdown."),
    title: str = typer.Option("", help="Title of the summary."),
    seed: int = typer.Option(0, help="Random seed."),
    engine: str = typer.Option("builtin", "--engine", help="Train each design with the built-in sparse GPR "
                               "(builtin) or the real gap_fit (gap_fit; needs --gap-fit-args)."),
    sparse_points: str = typer.Option("gap_fit,design", "--sparse-points", help="With --engine gap_fit: gap_fit "
                                      "(gap_fit picks its own among the training frames) and/or design (the "
                                      "design's sparse points, as select --export hands them over)."),
    workers: int = typer.Option(1, "--workers", help="gap_fit runs at a time."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Resamples of the test frames for the 95 % intervals."),
    model: ModelOptions = None,
):
    """Learning curves: select (labels hidden) → fit → evaluate, per strategy and budget.

    Designs are computed on the GAP of --gap-fit-args when given (else the built-in featomic
    GAP); --engine gap_fit trains each one with gap_fit exactly as a user would. Tables give
    test RMSEs with 95 % bootstrap intervals, random's median and spread over --n-random seeds,
    the DFT cost of each design and the data-efficiency ratio against random at 20 %.
    """
    from ..atomic import atomic_folder, check_output
    from ..bench import (
        BenchmarkConfig,
        run_benchmark,
        summary_markdown,
        update_markdown_section,
        write_outputs,
    )
    from ..fit import read_labels

    gap = model.gap
    if gap is not None:
        model.refuse(model.given_of("soap", "kernel", "sparse", "noise"),
                     "with gap_fit arguments (they set the descriptors, kernels, sparse points and sigmas)")
    else:
        model.refuse(["--sigma-virial"], "by benchmark (energies and forces)")
    engine = engine.strip().lower()
    if engine != "gap_fit" and given_options(ctx, ["sparse_points", "workers"]):
        raise InputError("--sparse-points and --workers are used with --engine gap_fit only")
    if markdown is None and given_options(ctx, ["section"]):
        raise InputError("--section is only used with --markdown")
    try:
        budget_list = [int(b) for b in split_list([budgets])]
    except ValueError:
        raise InputError(f"--budgets must be comma-separated integers, got {budgets!r}") from None
    check_output(output, what="-o", folder=True)
    if markdown is not None:
        check_output(markdown, what="--markdown")
    keys = _label_keys(energy_key, forces_key, forces)
    tests = {"test": _read_frames(test)}
    for item in off_sample or []:
        if "=" not in item:
            raise InputError(f"--off-sample must look like NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        tests[name] = _read_frames([path])
    config = BenchmarkConfig(
        budgets=budget_list, strategies=[s.lower() for s in split_list([strategies])], n_random=n_random,
        soap=model.soap, kernel=model.kernel, noise=model.noise, n_sparse=model.n_sparse,
        sparse_method=model.sparse_method, seed=seed, use_forces=forces, gap_fit=gap, engine=engine,
        sparse_variants=tuple(v.lower() for v in split_list([sparse_points])), workers=workers,
        n_bootstrap=bootstrap,
    )
    pool_frames = _read_frames(pool)
    for frames in [pool_frames, *tests.values()]:  # the same checks as fit: a named key must be on every frame
        read_labels(frames, **keys)
    result = run_benchmark(pool_frames, tests, config, energy_key=keys["energy_key"],
                           forces_key=keys["forces_key"] or "force", log=lambda m: out.print(m, highlight=False))
    command = "mlipdoe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with atomic_folder(output, what="-o") as tmp:
        paths = write_outputs(result, tmp, title=title, command=command)
    text = summary_markdown(result, title=title, command=command)
    out.print(text, highlight=False, markup=False)
    if markdown is not None:
        update_markdown_section(markdown, section, text)
    out.print(f"wrote {', '.join(str(output / Path(p).name) for p in paths.values())}")
