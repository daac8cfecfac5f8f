"""CLI contract of ``mlipdoe assess`` and ``mlipdoe grade`` (exit codes, files written)."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import SMALL_SOAP, run_cli

from mlipdoe.api import select
from mlipdoe.design import write_record
from mlipdoe.generate import generate_strained, write_frames
from mlipdoe.pool import read_pool

SOAP_ARGS = ["--n-max", "4", "--l-max", "3", "--soap-cutoff", "4.5", "--n-sparse", "25"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("assess")
    pool = generate_strained("Zr", n_frames=60, max_strain=0.05, rattle=0.02, seed=11)
    small = generate_strained("Zr", n_frames=30, max_strain=0.01, rattle=0.02, seed=12)
    target = generate_strained("Zr", n_frames=20, min_strain=0.03, max_strain=0.05, rattle=0.02, seed=13)
    write_frames(pool, d / "pool.xyz")
    write_frames(target, d / "target.xyz")
    write_frames([small[i] for i in np.random.default_rng(0).choice(30, 10, replace=False)], d / "small.xyz")
    result = select(read_pool([d / "pool.xyz"]), n=10, criterion="d", soap=SMALL_SOAP, n_sparse=25)
    write_record(result.record, d / "design.json")
    far = generate_strained("Zr", n_frames=2, min_strain=0.075, max_strain=0.08, seed=5)
    bcc = generate_strained("Zr", structure="bcc", a=3.57, n_frames=1, max_strain=0.01, seed=5)
    write_frames([pool[i] for i in result.selected[:3]] + far + bcc, d / "md.xyz")
    return d


def test_assess_record_is_adequate_with_report(files):
    rep = files / "report_good"
    r = run_cli("assess", "--record", files / "design.json", "--pool", files / "pool.xyz", "--target",
                files / "target.xyz", "--max-std", "5", "--report", rep, "--test", files / "small.xyz")
    assert r.returncode == 0, r.stderr
    assert "ADEQUATE" in r.stdout and "NOT ADEQUATE" not in r.stdout
    data = json.loads((rep / "report.json").read_text())
    assert data["adequacy"]["verdict"] == "ADEQUATE"
    assert data["inputs"]["source"] == "record"
    assert data["bias_check"] is not None
    for name in data["figures"].values():
        assert (rep / name).stat().st_size > 1000


def test_assess_random_small_strain_set_is_not_adequate(files):
    r = run_cli("assess", "--train", files / "small.xyz", "--pool", files / "pool.xyz", "--target",
                files / "target.xyz", "--max-std", "5", *SOAP_ARGS)
    assert r.returncode == 1, r.stderr
    assert "NOT ADEQUATE" in r.stdout
    assert "fraction of frames with per-atom energy std <= 5 meV/atom" in " ".join(r.stdout.split())


def test_assess_bad_input_exit_2(files):
    r = run_cli("assess", "--train", files / "missing.xyz", *SOAP_ARGS)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: training file not found: {files / 'missing.xyz'}"]
    moved = json.loads((files / "design.json").read_text())
    moved["pool"][0]["path"] = str(files / "moved.xyz")
    (files / "moved.json").write_text(json.dumps(moved))
    r = run_cli("assess", "--record", files / "moved.json")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: the record's pool file {files / 'moved.xyz'} is not there; "
                                             f"give the pool with --pool"]
    r = run_cli("assess", "--record", files / "design.json", "--zeta", "2")
    assert r.returncode == 2 and "--zeta is not used with --record" in r.stderr


def test_grade_writes_and_keeps_far_frames(files):
    out = files / "graded.xyz"
    r = run_cli("grade", files / "md.xyz", "--record", files / "design.json", "--pool", files / "pool.xyz", "-o", out,
                "--keep-above", "1.0")
    assert r.returncode == 0, r.stderr
    kept = ase.io.read(out, index=":")
    assert [a.info["mlipdoe_index"] for a in kept] == [3, 4, 5]
    for a in kept:
        assert a.info["mlipdoe_grade"] > 1
        assert a.arrays["mlipdoe_grade"].shape == (len(a),)
    assert not list(files.glob(".graded.xyz*"))


def test_assess_calibration(files):
    frames = ase.io.read(files / "target.xyz", index=":")[:6]
    labels, preds = [], []
    for k, a in enumerate(frames):
        lab, pred = a.copy(), a.copy()
        lab.calc = SinglePointCalculator(lab, energy=-8.0 * len(a))
        pred.calc = SinglePointCalculator(pred, energy=(-8.0 + 0.001 * k) * len(a))
        labels.append(lab)
        preds.append(pred)
    ase.io.write(files / "labels.xyz", labels)
    ase.io.write(files / "preds.xyz", preds)
    rep = files / "report_cal"
    r = run_cli("assess", "--record", files / "design.json", "--pool", files / "pool.xyz", "--labels",
                files / "labels.xyz", "--predictions", files / "preds.xyz", "--report", rep)
    assert r.returncode == 0, r.stderr
    cal = json.loads((rep / "report.json").read_text())["calibration"]
    assert cal["n_frames"] == 6
    np.testing.assert_allclose(cal["abs_error_meV"], np.arange(6.0), atol=1e-6)
    assert "Spearman" in r.stdout
