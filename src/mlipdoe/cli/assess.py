"""Commands: assess (adequacy certificate, informativeness, bias check) and grade (extrapolation)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..exceptions import InputError
from . import _progress, app, out, pool_for_record
from .options import ModelOptions, model_options


def _read(paths, what: str) -> list:
    from ..pool import read_frames

    frames = []
    for p in paths:
        if not Path(p).is_file():
            raise InputError(f"{what} file not found: {p}")
        got = read_frames(str(p))
        if not got:
            raise InputError(f"{what} file {p} has no frames")
        frames += got
    return frames


def _fmt(x, spec=".3g") -> str:
    return "—" if x is None else format(x, spec)


def _print_report(report: dict, limit: int = 20) -> None:
    ident = report["identifiability"]
    t = Table(title="Identifiability (eigenvalues of K_MM^-1/2 F K_MM^-1/2)")
    for col in ("species" if ident["per_species"] else "descriptor", "M",
                f"constrained (λ > 1 + {ident['threshold']:g})"):
        t.add_column(col, justify="right")
    for s in ident["per_species"]:
        t.add_row(str(s["species"]), str(s["M"]), str(s["n_constrained"]))
    for s in ident.get("per_descriptor", []):
        t.add_row(s["descriptor"], str(s["M"]), str(s["n_constrained"]))
    t.add_row("all", str(ident["M"]), str(ident["n_constrained"]))
    out.print(t)
    out.print(f"condition number {ident['condition_number']:.3g}   effective parameters tr(I − C) = "
              f"{ident['effective_parameters']:.2f} from {ident['n_observations']} observations "
              f"({ident['n_frames']} frames)")
    ad = report["adequacy"]
    t = Table(title=f"Predictive energy std (meV/atom); threshold {ad['max_std_meV']:g}, "
                    f"required fraction {ad['min_fraction']:g}")
    for col in ("set", "frames", "mean", "median", "p95", "max", "fraction ≤ max-std", "check"):
        t.add_column(col, justify="left" if col in ("set", "check") else "right")
    for name, s in (("train", report["train_std_meV"]), ("pool", report.get("pool_std_meV"))):
        if s:
            t.add_row(name, str(s["n"]), _fmt(s["mean"]), _fmt(s["median"]), _fmt(s["p95"]), _fmt(s["max"]), "", "")
    for c in ad["targets"]:
        t.add_row(f"target {c['name']}", str(c["n_frames"]), _fmt(c["mean"]), _fmt(c["median"]), _fmt(c["p95"]),
                  _fmt(c["max"]), f"{c['fraction_below']:.3f}", "pass" if c["passed"] else "FAIL")
    out.print(t)
    info = report["informativeness"]
    t = Table(title=f"Members ({info['criterion']} = {info['value']:.4g}; mean loss {info['mean_loss']:.3g})")
    for col in ("#", "frame", "loss if removed", "LOO std", "best swap", "swap gain", "redundant"):
        t.add_column(col, justify="left" if col in ("frame", "best swap", "redundant") else "right")
    for k, m in enumerate(info["members"]):
        if k >= limit:
            t.add_row("…", "", "", "", "", "", "")
            break
        sw = m["best_swap"]
        t.add_row(str(m["position"]), m["label"], f"{m['loss']:.4g}", f"{m['loo_std_meV']:.3g}",
                  sw["label"] if sw else "—", f"{sw['gain']:.4g}" if sw else "—", "yes" if m["redundant"] else "")
    out.print(t)
    adds = report.get("best_additions")
    if adds:
        t = Table(title="Best additions")
        for col in ("frame", "atoms", "gain", "gain / cost"):
            t.add_column(col, justify="left" if col == "frame" else "right")
        for f in adds["frames"]:
            t.add_row(f["label"], str(f["n_atoms"]), f"{f['gain']:.4g}", f"{f['gain_per_cost']:.4g}")
        out.print(t)
    eff = report.get("design_efficiency")
    if eff:
        out.print(f"design efficiency {eff['efficiency']:.3f} = {eff['formula']} against the {eff['optimizer']} design "
                  f"of {eff['n_frames']} pool frames" + (f"  [{eff['note']}]" if eff.get("note") else ""))
    bias = report.get("bias_check")
    if bias:
        out.print(f"bias check: test→train vs train→train kernel distances, one-sided Mann–Whitney U p = "
                  f"{_fmt(bias['p_value'])} (warn when ≥ {bias['alpha']:g}); "
                  f"median ratio {_fmt(bias['median_ratio'])} "
                  f"(warn when < {bias['min_ratio']:g}); "
                  f"{_fmt(bias['fraction_beyond'], '.0%')} of test frames beyond the coverage radius "
                  f"{_fmt(bias['coverage_radius'])}")
        if bias["warning"]:
            out.print(f"[bold yellow]WARNING[/]: {bias['warning']}")
    cal = report.get("calibration")
    if cal:
        out.print(f"calibration: Spearman ρ(std, |error|) = {_fmt(cal['spearman_rho'])} "
                  f"(p = {_fmt(cal['p_value'])}, {cal['n_frames']} frames)")
    colour = {"ADEQUATE": "green", "NOT ADEQUATE": "red"}.get(ad["verdict"], "yellow")
    out.print(f"[bold {colour}]{ad['verdict']}[/]: {ad['reason']}", soft_wrap=True)


@app.command()
@model_options("soap", "kernel", "sparse", "noise", "gap", "linear", "observe")
def assess(
    ctx: typer.Context,
    train: Optional[Path] = typer.Option(None, "--train", help="Training frames (extxyz or any ASE file)."),
    pool: Optional[List[Path]] = typer.Option(
        None, "--pool", help="Candidate pool file(s), repeatable (with --record: default the files it names)."),
    target: Optional[List[Path]] = typer.Option(None, "--target",
                                                help="Where the potential will be used (repeatable)."),
    record: Optional[Path] = typer.Option(
        None, "--record", help="Design record over the pool (the training set; the model options come from it)."),
    report_dir: Optional[Path] = typer.Option(
        None, "--report", help="Folder for report.json and PNG figures (created; its parent must exist)."),
    max_std: float = typer.Option(5.0, "--max-std", help="Per-atom energy std threshold (meV/atom)."),
    min_fraction: float = typer.Option(0.95, "--min-fraction", help="Fraction of target frames that must be below."),
    test: Optional[Path] = typer.Option(None, "--test", help="Test set for the confirmation-bias check."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Test frames with DFT energies (calibration)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="The same frames with model energies."),
    criterion: str = typer.Option("d", help="Criterion for losses, swaps, additions and efficiency (any case)."),
    top_k: int = typer.Option(10, "--top-k", help="Best additions to list."),
    threshold: float = typer.Option(1.0, help="A direction is constrained when its eigenvalue > 1 + threshold."),
    seed: int = typer.Option(0, help="Random seed."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
    model: ModelOptions = None,
):
    """Assess a training set before DFT: identifiability, target adequacy, informativeness, bias check.

    Exit code 0 ADEQUATE (or no --target), 1 NOT ADEQUATE, 2 bad input.
    """
    from .. import assess as A
    from ..atomic import atomic_folder, check_output
    from ..design import read_record
    from ..pool import read_pool

    if train is None and record is None:
        raise InputError("give the training set: --train FILE, or --record design.json (its pool: --pool)")
    if (labels is None) != (predictions is None):
        raise InputError("--labels and --predictions go together (the same frames with DFT and model energies)")
    if record is not None:
        model.refuse(model.given, "with --record (the record's hypers, sparse points and observations are used)")
    else:
        observations = model.observations
        if "forces" not in observations:
            model.refuse(["--sigma-force"], "without forces in --observe")
        if "virials" not in observations:
            model.refuse(["--sigma-virial"], "without virials in --observe")
    if report_dir is not None:
        check_output(report_dir, what="--report", folder=True)
    train_frames = _read([train], "training") if train is not None else None
    rec = read_record(record) if record is not None else None
    if rec is not None:
        pool_obj = pool_for_record(rec, pool)
    else:
        pool_obj = read_pool([str(p) for p in pool]) if pool else None
    targets = {}
    for p in target or []:
        name = p.name if p.name not in targets else str(p)
        targets[name] = _read([p], "target")
    setup = A.prepare(train_frames, pool=pool_obj, record=rec, config=None if rec is not None else model.config(seed),
                      train_labels=[f"{train.name}:{k}" for k in range(len(train_frames))] if train_frames else None,
                      progress=_progress(quiet))
    report = A.assess(setup, targets=targets, test=_read([test], "test") if test else None, max_std=max_std,
                      min_fraction=min_fraction, criterion=criterion.strip().lower(), top_k=top_k,
                      threshold=threshold, labels=_read([labels], "labels") if labels else None,
                      predictions=_read([predictions], "predictions") if predictions else None, seed=seed)
    report["inputs"]["paths"] = {"train": str(train) if train else None,
                                 "pool": [f.path for f in pool_obj.files] if pool_obj is not None else [],
                                 "record": str(record) if record else None, "targets": [str(p) for p in target or []],
                                 "test": str(test) if test else None}
    if report_dir is not None:
        with atomic_folder(report_dir, what="--report") as tmp:
            report["figures"] = A.write_figures(setup, report, tmp, targets=targets)
            A.write_report(report, tmp)
    _print_report(report)
    if report_dir is not None:
        out.print(f"wrote {report_dir}/report.json and {len(report['figures'])} figures")
    code = A.exit_code(report)
    if code:
        raise typer.Exit(code)


@app.command()
def grade(
    frames: List[Path] = typer.Argument(..., help="Configurations to grade (e.g. from an MD run)."),
    record: Path = typer.Option(..., "--record", help="Design record of the training set."),
    pool: Optional[List[Path]] = typer.Option(
        None, "--pool", help="The record's pool file(s) (default: the files the record names, if unchanged)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="extxyz with the grades."),
    keep_above: Optional[float] = typer.Option(
        None, "--keep-above", help="With -o: write only frames with grade above this."),
    keep_by: str = typer.Option(
        "frame", "--keep-by", help="With --keep-above: frame (frame γ) or atom (largest atom γ)."),
):
    """Extrapolation grade γ = v(frame) / max over training frames of v (per frame and per atom)."""
    from .. import assess as A
    from ..api import model_from_record
    from ..atomic import check_output
    from ..design import read_record
    from ..generate import write_frames

    if keep_above is not None and output is None:
        raise InputError("--keep-above needs -o/--output")
    keep_by = keep_by.strip().lower()
    if keep_above is None and keep_by != "frame":
        raise InputError("--keep-by is only used with --keep-above")
    if output is not None:
        check_output(output, what="-o")
    rec = read_record(record)
    pool_obj = pool_for_record(rec, pool)
    model = model_from_record(rec, pool_obj)
    train = [int(i) for i in list(rec.fixed) + list(rec.selected)]
    todo = _read(frames, "frames")
    result = A.grade(model, train, todo, train_frames=[pool_obj.frames[i] for i in train])
    graded = A.graded_frames(todo, result, keep_above=keep_above, by=keep_by)
    t = Table(title="Extrapolation grade (γ > 1: beyond the training set)")
    for col in ("frame", "atoms", "γ frame", "max γ atom"):
        t.add_column(col, justify="right")
    for k, a in enumerate(todo[:40]):
        t.add_row(str(k), str(len(a)), f"{result.frame_grade[k]:.3g}", f"{result.atom_grades[k].max():.3g}")
    if len(todo) > 40:
        t.add_row("…", "", "", "")
    out.print(t)
    n_above = int((result.frame_grade > 1.0).sum())
    out.print(f"{n_above} of {len(todo)} frames have γ > 1")
    if output is not None:
        if not graded:
            out.print(f"no frame above {keep_above:g}: {output} not written")
        else:
            write_frames(graded, output, what="-o")
            out.print(f"wrote {len(graded)} frames to {output}")
