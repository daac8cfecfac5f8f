"""GAP-exact rows (quippy descriptors, gap_fit's model) against independent computations.

- force and virial rows vs central finite differences of the energy rows;
- energy rows and the record's d value vs a brute-force sum over quippy's instances with the
  exported sparse points read back from gap_fit's FILE format;
- the built-in posterior mean vs the real gap_fit trained with the exported arguments.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("quippy")

from conftest import SHARED_DATA, eam_labelled  # noqa: E402

from mlipdoe.gap_spec import parse_gap_fit_args  # noqa: E402
from mlipdoe.generate import zr_example  # noqa: E402
from mlipdoe.model.gap_quippy import (  # noqa: E402
    _quippy_descriptor,
    build_gap_model,
    compute_instances,
    frame_rows,
)
from mlipdoe.model.rows import _VOIGT_PAIRS, posterior_mean  # noqa: E402

ARGS = ("gap={distance_2b cutoff=5.0 cutoff_transition_width=1.0 delta=1.0 covariance_type=ard_se "
        "theta_uniform=1.0 n_sparse=10 sparse_method=uniform : "
        "soap cutoff=4.5 cutoff_transition_width=0.5 n_max=4 l_max=3 atom_sigma=0.5 delta=0.2 zeta=4 "
        "covariance_type=dot_product n_sparse=20 sparse_method=cur_points : "
        "angle_3b cutoff=3.7 delta=0.1 covariance_type=ard_se theta_uniform=1.5 n_sparse=15 sparse_method=random} "
        "default_sigma={0.002 0.1 0.05 0} sparse_jitter=1e-10 e0_method=average")


@pytest.fixture(scope="module")
def spec():
    return parse_gap_fit_args(ARGS)


@pytest.fixture(scope="module")
def labelled():
    return eam_labelled(zr_example(14, seed=3))


def _rows(model, atoms, grad):
    descs = [_quippy_descriptor(s) for s in model.sparse.labels]
    inst = [compute_instances(d, atoms, D, grad=grad) for d, D in zip(descs, model.dimensions)]
    return frame_rows(inst, model.sparse, model.kernels, len(atoms), forces=grad, virials=grad, local=not grad)


def _two_species_frame():
    atoms = zr_example(1, seed=5)[0]
    atoms.numbers[[1, 6, 11]] = 28  # three Ni atoms in the Zr cell
    return atoms


@pytest.mark.parametrize("which", ["zr", "zr_ni"])
def test_force_and_virial_rows_match_finite_differences(spec, which):
    frames = zr_example(6, seed=3) if which == "zr" else [_two_species_frame(), _two_species_frame()]
    model = build_gap_model(frames, spec, observations=("energy",), workers=1)
    atoms = frames[0]
    energy, force, virial, _ = _rows(model, atoms, True)
    h = 1e-5
    scale = np.max(np.abs(force))
    for j in (0, 1, 6):
        for a in range(3):
            p, m = atoms.copy(), atoms.copy()
            p.positions[j, a] += h
            m.positions[j, a] -= h
            fd = -(_rows(model, p, False)[0] - _rows(model, m, False)[0]) / (2 * h)
            # central differences: O(h²) truncation ≈ 1e-10 of the rows; round-off ε|φ|/h ≈ 1e-9
            np.testing.assert_allclose(force[3 * j + a], fd, rtol=0, atol=1e-6 * scale)
    vscale = np.max(np.abs(virial))
    for k, (a, b) in enumerate(_VOIGT_PAIRS):
        def strained(eps, a=a, b=b):
            E = np.eye(3)
            E[a, b] += eps / 2 if a != b else eps
            if a != b:
                E[b, a] += eps / 2
            s = atoms.copy()
            s.set_cell(atoms.cell.array @ E.T, scale_atoms=True)
            return _rows(model, s, False)[0]

        fd = -(strained(h) - strained(-h)) / (2 * h)
        np.testing.assert_allclose(virial[k], fd, rtol=0, atol=1e-6 * vscale)


def test_local_rows_sum_to_energy_rows(spec):
    frames = [_two_species_frame()]
    model = build_gap_model(frames, spec, workers=1)
    energy, _, _, local = _rows(model, frames[0], False)
    np.testing.assert_allclose(local.sum(axis=0), energy, rtol=1e-12, atol=1e-13 * np.abs(energy).max())
    # whitened: the same up to the triangular solve's round-off, ~ε·cond(L)·|φ|
    whitened = model.local_rows(frames)[0].sum(axis=0)
    cond = np.linalg.cond(model.L)
    np.testing.assert_allclose(whitened, model.psi[0], rtol=0, atol=1e-15 * cond * np.abs(energy).max() * 10)


def _read_sparse_file(path, dim):
    """gap_fit's FILE format, read independently: per point its weight, then ``dim`` values."""
    values = np.loadtxt(path).reshape(-1, dim + 1)
    return values[:, 1:], values[:, 0]


def _k(covariance_type, delta, zeta, theta, x, z):
    if covariance_type == "dot_product":
        return delta**2 * float(np.dot(x, z)) ** zeta
    return delta**2 * np.exp(-0.5 * float(np.sum((x - z) ** 2)) / theta**2)


def test_record_d_value_equals_brute_force_from_exported_sparse_points(spec, tmp_path):
    from mlipdoe.api import design
    from mlipdoe.budget import Budget
    from mlipdoe.export import write_gap_fit_inputs
    from mlipdoe.hypers import DesignConfig, ModelConfig

    frames = zr_example(10, seed=4)
    config = DesignConfig(model=ModelConfig(gap=spec), criterion="d", budget=Budget("count", 4)).validate()
    result = design(frames, config)
    write_gap_fit_inputs(result.model, tmp_path)
    descs = result.model.descriptors
    blocks, phis = [], np.zeros((len(frames), 0))
    for k, d in enumerate(descs):
        q = _quippy_descriptor(d.descriptor_string())
        Z, s = _read_sparse_file(tmp_path / f"sparse_{k}.txt", int(q.n_dim))
        kern = (d.covariance_type, d.delta, d.zeta, d.theta_uniform)
        blocks.append(np.array([[si * sj * _k(*kern, zi, zj) for zj, sj in zip(Z, s)] for zi, si in zip(Z, s)]))
        col = np.zeros((len(frames), len(Z)))
        for f, atoms in enumerate(frames):
            out = q.calc(atoms)
            for x, c in zip(np.asarray(out["data"]).reshape(len(out["covariance_cutoff"]), -1),
                            out["covariance_cutoff"]):
                col[f] += [c * sm * _k(*kern, x, zm) for zm, sm in zip(Z, s)]
        phis = np.hstack([phis, col])
    import scipy.linalg

    K = scipy.linalg.block_diag(*blocks) + spec.sparse_jitter * np.eye(phis.shape[1])
    S = list(result.selected)
    var = np.array([spec.default_sigma[0] ** 2 * len(frames[s]) for s in S])
    # log det(K + ΦᵀΛ⁻¹Φ) − log det K, as log det(I + A Aᵀ) with A = chol(K)⁻¹ Φᵀ Λ^-1/2: cond(K) ≈ 5e10
    # here, so the unwhitened difference of two log-determinants would lose every digit
    A = np.linalg.solve(np.linalg.cholesky(K), phis[S].T / np.sqrt(var))
    value = np.linalg.slogdet(np.eye(len(K)) + A @ A.T)[1]
    assert value == pytest.approx(result.value, rel=1e-7)  # measured 2e-9
    assert result.record.to_dict()["descriptor"]["backend"] == "quippy"


def _gap_fit_predictions(tmp_path, args, train, test):
    import ase.io
    from quippy.potential import Potential

    ase.io.write(tmp_path / "train.xyz", train, format="extxyz")
    cmd = ["gap_fit", *shlex.split(args), "at_file=train.xyz", "gp_file=gp.xml"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    pot = Potential(param_filename=str(tmp_path / "gp.xml"))
    energies, forces = [], []
    for atoms in test:
        a = atoms.copy()
        a.calc = pot
        energies.append(a.get_potential_energy())
        forces.append(np.array(a.get_forces()))
    return np.array(energies), forces


def _parity(spec, train, test, tmp_path):
    from mlipdoe.export import write_gap_fit_inputs

    model = build_gap_model(train, spec, observations=("energy", "forces"), workers=1)
    args = write_gap_fit_inputs(model, tmp_path)
    ref_e, ref_f = _gap_fit_predictions(tmp_path, args, train, test)
    e0 = np.mean([a.info["energy"] / len(a) for a in train])
    rows = model.observation_rows(train)
    labels = [np.concatenate([[a.info["energy"] - e0 * len(a)], a.arrays["force"].reshape(-1)]) for a in train]
    beta = posterior_mean(rows, labels, model.M)
    worst_e, worst_f = 0.0, 0.0
    for atoms, r, e, f in zip(test, model.observation_rows(test), ref_e, ref_f):
        pred = r.psi @ beta
        worst_e = max(worst_e, abs(pred[0] + e0 * len(atoms) - e) / abs(e))
        worst_f = max(worst_f, np.max(np.abs(pred[1:].reshape(-1, 3) - f)) / np.max(np.abs(f)))
    return worst_e, worst_f


@pytest.mark.skipif(shutil.which("gap_fit") is None, reason="gap_fit not installed")
def test_builtin_posterior_mean_equals_gap_fit_on_exported_arguments(spec, labelled, tmp_path):
    worst_e, worst_f = _parity(spec, labelled[:10], labelled[10:], tmp_path)
    # measured 2e-11 (energies) and 3e-8 (forces, relative to the largest component)
    assert worst_e < 1e-6 and worst_f < 1e-6


@pytest.mark.skipif(shutil.which("gap_fit") is None, reason="gap_fit not installed")
def test_parity_on_zuo_mo(tmp_path):
    import ase.io

    path = SHARED_DATA / "zuo2020" / "Mo_train.xyz"
    if not path.exists():
        pytest.skip("Zuo Mo data not present")
    frames = ase.io.read(path, index=":")
    small = [a for a in frames if len(a) <= 60][:14]
    for a in small:  # labels as gap_fit reads them (the file's energy in info, force in arrays)
        a.info["energy"] = float(a.info["energy"]) if "energy" in a.info else a.get_potential_energy()
        a.arrays["force"] = np.array(a.arrays["force"]) if "force" in a.arrays else a.get_forces()
        a.calc = None
    spec = parse_gap_fit_args(
        "gap={distance_2b cutoff=5.0 cutoff_transition_width=1.0 delta=1.0 covariance_type=ard_se "
        "theta_uniform=1.0 n_sparse=15 sparse_method=uniform : soap cutoff=4.5 cutoff_transition_width=0.5 "
        "n_max=4 l_max=3 atom_sigma=0.5 delta=0.2 zeta=4 covariance_type=dot_product n_sparse=30 "
        "sparse_method=cur_points} default_sigma={0.002 0.1 0.05 0} sparse_jitter=1e-10 e0_method=average")
    worst_e, worst_f = _parity(spec, small[:-4], small[-4:], tmp_path)
    assert worst_e < 1e-6 and worst_f < 1e-6


def test_worker_processes_give_bit_identical_rows(spec, monkeypatch):
    import mlipdoe.model.gap_quippy as gq

    frames = zr_example(12, seed=7)
    serial = build_gap_model(frames, spec, observations=("energy", "forces"), workers=1)
    monkeypatch.setattr(gq, "MIN_FRAMES_FOR_WORKERS", 1)
    monkeypatch.setattr(gq, "CHUNK_FRAMES", 3)
    parallel = build_gap_model(frames, spec, observations=("energy", "forces"), workers=2)
    assert np.array_equal(serial.psi, parallel.psi)
    assert all(np.array_equal(a, b) for a, b in zip(serial.factors, parallel.factors))


def test_frame_sigmas_from_info(spec):
    frames = zr_example(4, seed=3)
    frames[1].info["energy_sigma"] = 0.01
    frames[2].info["force_sigma"] = 0.3
    model = build_gap_model(frames, spec, observations=("energy", "forces"), workers=1)
    rows = model.observation_rows(frames)
    assert rows[1].variance[0] == pytest.approx(0.01**2)
    assert rows[0].variance[0] == pytest.approx(0.002**2 * len(frames[0]))
    assert np.allclose(rows[2].variance[1:], 0.3**2) and np.allclose(rows[0].variance[1:], 0.1**2)
    assert model.energy_variance[1] == pytest.approx(0.01**2)


def test_record_round_trip_and_verify(spec, tmp_path):
    from mlipdoe.api import design, verify_record
    from mlipdoe.budget import Budget
    from mlipdoe.design import read_record, write_record
    from mlipdoe.generate import write_frames
    from mlipdoe.hypers import DesignConfig, ModelConfig
    from mlipdoe.pool import read_pool

    write_frames(zr_example(10, seed=4), tmp_path / "pool.xyz")
    pool = read_pool([str(tmp_path / "pool.xyz")])
    config = DesignConfig(model=ModelConfig(gap=spec, observations=("energy", "forces")), criterion="d",
                          budget=Budget("count", 3)).validate()
    result = design(pool, config)
    write_record(result.record, tmp_path / "design.json")
    rec = read_record(tmp_path / "design.json")
    assert json.loads((tmp_path / "design.json").read_text())["sparse_points"][0][0] == 0
    assert DesignConfig.from_record(rec).model.gap == spec
    check = verify_record(rec, pool)
    assert check["ok"], check


def test_featomic_soap_rows_equal_quippy_rows(spec):
    frames = [_two_species_frame(), *zr_example(3, seed=9)]
    fast = build_gap_model(frames, spec, observations=("energy", "forces"), workers=1)
    ref = build_gap_model(frames, spec, observations=("energy", "forces"), workers=1, use_featomic=False)
    assert any(f is not None for f in fast.featomic) and all(f is None for f in ref.featomic)
    assert [x.tolist() for x in fast.sparse.locations] == [x.tolist() for x in ref.sparse.locations]
    scale = np.abs(ref.psi).max()
    np.testing.assert_allclose(fast.psi, ref.psi, rtol=0, atol=1e-9 * scale)  # measured ~1e-12
    for a, b in zip(fast.observation_rows(frames), ref.observation_rows(frames)):
        np.testing.assert_allclose(a.psi, b.psi, rtol=0, atol=1e-8 * np.abs(b.psi).max())


def test_config_type_n_sparse_chooses_within_each_config_type():
    spec = parse_gap_fit_args(
        "gap={soap cutoff=4.5 n_max=3 l_max=2 atom_sigma=0.5 delta=0.2 zeta=2 covariance_type=dot_product "
        "config_type_n_sparse={{strain:4:rattled:3}} sparse_method=random} default_sigma={0.002 0.1 0 0}")
    frames = zr_example(6, seed=1)
    types = ["strain"] * 3 + ["rattled"] * 3
    model = build_gap_model(frames, spec, config_types=types, workers=1)
    frames_of_points = model.sparse.locations[0][:, 0]
    assert sorted(types[f] for f in frames_of_points) == ["rattled"] * 3 + ["strain"] * 4
    again = build_gap_model(frames, spec, config_types=types, workers=1)
    assert np.array_equal(again.sparse.locations[0], model.sparse.locations[0])


def test_isolated_e0_rule_is_noted_and_refused_by_the_builtin_fit():
    from mlipdoe.exceptions import ConfigurationError
    from mlipdoe.fit import gap_fit_e0, read_labels

    spec = parse_gap_fit_args(ARGS.replace(" e0_method=average", ""))  # gap_fit's default: isolated
    frames = eam_labelled(zr_example(4, seed=3))
    model = build_gap_model(frames, spec, workers=1)
    assert any("e0_method=isolated" in n for n in model.notes)
    with pytest.raises(ConfigurationError, match="single-atom training frame"):
        gap_fit_e0(spec, read_labels(frames))
    assert gap_fit_e0(parse_gap_fit_args(ARGS.replace("e0_method=average", "e0=-6.5")), read_labels(frames)) == -6.5
