"""The command line on gap_fit arguments: select/verify/fit/assess, exports, and refusals (exit 2, one line)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import eam_labelled, run_cli

pytest.importorskip("quippy")

from mlipdoe.generate import write_frames, zr_example  # noqa: E402

ARGS = ("gap={distance_2b cutoff=5.0 cutoff_transition_width=1.0 delta=1.0 covariance_type=ard_se theta_uniform=1.0 "
        "n_sparse=8 sparse_method=uniform : soap cutoff=4.5 n_max=4 l_max=3 atom_sigma=0.5 delta=0.2 zeta=4 "
        "covariance_type=dot_product n_sparse=15 sparse_method=cur_points} default_sigma={0.002 0.1 0 0} "
        "e0_method=average")


@pytest.fixture(scope="module")
def designed(tmp_path_factory):
    """A labelled pool and a GAP-exact design of 6 frames with energies + forces, exported."""
    d = tmp_path_factory.mktemp("gap")
    frames = eam_labelled(zr_example(16, seed=2))
    write_frames(frames, d / "pool.xyz")
    proc = run_cli("select", d / "pool.xyz", "-n", "6", "--gap-fit-args", ARGS, "--observe", "energy,forces",
                   "--criterion", "i", "-o", d / "train.xyz", "--record", d / "design.json", "--export", d / "gap",
                   "-q")
    assert proc.returncode == 0, proc.stderr
    return d, proc


def test_select_writes_record_and_gap_fit_inputs(designed):
    d, proc = designed
    rec = json.loads((d / "design.json").read_text())
    assert rec["format"] == "mlipdoe.design/3" and rec["descriptor"]["backend"] == "quippy"
    assert rec["kernel"] == {"type": "gap_fit"} and rec["noise"]["virial"] == 0
    assert all(len(p) == 3 for p in rec["sparse_points"])
    args = (d / "gap" / "gap_fit_args.txt").read_text()
    assert "sparse_method=file" in args and "add_species=F" in args
    assert sorted(p.name for p in (d / "gap").iterdir()) == ["gap_fit_args.txt", "sparse_0.txt", "sparse_1.txt"]
    assert "gap_fit_args.txt" in proc.stdout
    verify = run_cli("verify", "--record", d / "design.json")
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout + verify.stderr


@pytest.mark.skipif(shutil.which("gap_fit") is None, reason="gap_fit not installed")
def test_fit_with_the_record_model_matches_gap_fit(designed, tmp_path):
    from mlipdoe.fit import load_model

    d, _ = designed
    for engine in ("builtin", "gap_fit"):
        proc = run_cli("fit", d / "train.xyz", "--record", d / "design.json", "--engine", engine,
                       "-o", tmp_path / engine)
        assert proc.returncode == 0, proc.stderr
    test = eam_labelled(zr_example(3, seed=11))
    ours = load_model(tmp_path / "builtin").predict(test)
    theirs = load_model(tmp_path / "gap_fit").predict(test)
    assert np.max(np.abs(ours.energy - theirs.energy) / np.abs(theirs.energy)) < 1e-6
    scale = max(np.abs(f).max() for f in theirs.forces)
    assert max(np.abs(a - b).max() for a, b in zip(ours.forces, theirs.forces)) < 1e-6 * scale


def test_assess_on_a_gap_record_reports_each_descriptor(designed, tmp_path):
    d, _ = designed
    proc = run_cli("assess", "--record", d / "design.json", "--report", tmp_path / "rep", "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    blocks = report["identifiability"]["per_descriptor"]
    assert [b["descriptor"].split()[0] for b in blocks] == ["distance_2b", "soap"]
    assert report["model"]["kernel"] == {"type": "gap_fit"}


def test_gap_fit_args_from_a_file(designed, tmp_path):
    d, _ = designed
    (tmp_path / "args.txt").write_text(ARGS.replace(" : ", "\n : ") + "\n")
    proc = run_cli("select", d / "pool.xyz", "-n", "2", "--gap-fit-args-file", tmp_path / "args.txt",
                   "-o", tmp_path / "t.xyz", "--record", tmp_path / "r.json", "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("extra, args, message", [
    ((), ARGS.replace("n_max=4", "n_max=4 foo_bar=3"), "foo_bar"),
    ((), ARGS + " hessian_delta=0.01", "hessian_delta"),
    ((), ARGS.replace("soap cutoff", "turbo_soap cutoff"), "turbo_soap"),
    (("--zeta", "3"), ARGS, "--zeta"),
    (("--sigma-energy", "0.01"), ARGS, "--sigma-energy"),
    (("--store", "STORE"), ARGS, "--store"),
    ((), ARGS + " at_file=x.xyz", "at_file"),
])
def test_bad_gap_fit_args_exit_2_naming_the_problem(designed, tmp_path, extra, args, message):
    d, _ = designed
    extra = tuple(str(tmp_path / "store") if e == "STORE" else e for e in extra)
    out = tmp_path / "o.xyz"
    proc = run_cli("select", d / "pool.xyz", "-n", "2", "--gap-fit-args", args, *extra, "-o", out,
                   "--record", tmp_path / "r.json", "-q")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_export_needs_gap_fit_args(designed, tmp_path):
    d, _ = designed
    proc = run_cli("select", d / "pool.xyz", "-n", "2", "--export", tmp_path / "e", "-o", tmp_path / "o.xyz",
                   "--record", tmp_path / "r.json", "-q", "--n-sparse", "5", "--n-max", "4", "--l-max", "3")
    assert proc.returncode == 2 and "--gap-fit-args" in proc.stderr, proc.stderr
    assert not (tmp_path / "e").exists()


def test_score_and_grade_on_a_gap_record(designed, tmp_path):
    d, _ = designed
    score = run_cli("score", "--record", d / "design.json")
    assert score.returncode == 0 and "d" in score.stdout, score.stderr
    write_frames(zr_example(3, seed=21), tmp_path / "md.xyz")
    grade = run_cli("grade", tmp_path / "md.xyz", "--record", d / "design.json", "-o", tmp_path / "g.xyz")
    assert grade.returncode == 0, grade.stderr
    import ase.io

    graded = ase.io.read(tmp_path / "g.xyz", index=":")
    assert len(graded) == 3 and all(np.isfinite(a.info["mlipdoe_grade"]) for a in graded)


def test_unsupported_sparse_method_is_refused_before_any_descriptor(designed, tmp_path):
    d, _ = designed
    args = ARGS.replace("sparse_method=cur_points", "sparse_method=kmeans")
    proc = run_cli("select", d / "pool.xyz", "-n", "2", "--gap-fit-args", args, "-o", tmp_path / "o.xyz",
                   "--record", tmp_path / "r.json", "-q")
    assert proc.returncode == 2 and "sparse_method=kmeans" in proc.stderr, proc.stderr
