"""Force and virial rows (mlipdoe.rows): finite differences, compression, ordering, fit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import SMALL_SOAP

from mlipdoe.exceptions import InputError
from mlipdoe.hypers import Noise
from mlipdoe.model import build_model
from mlipdoe.model.kernels import Kernel
from mlipdoe.model.rows import ObservationRows, compress_rows, posterior_mean

VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _rattled_binary(symbols=("Cu", "Ni"), a=3.6, rattle=0.1, seed=0):
    """Rattled, slightly sheared 2×2×2 cubic fcc cell (32 atoms) with two species."""
    atoms = bulk(symbols[0], "fcc", a=a, cubic=True).repeat(2)
    numbers = atoms.numbers.copy()
    rng = np.random.default_rng(seed)
    from ase.data import atomic_numbers

    numbers[rng.choice(len(atoms), size=11, replace=False)] = atomic_numbers[symbols[1]]
    atoms.numbers = numbers
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + [[0.01, 0.02, 0], [0.02, -0.01, 0.005], [0, 0.005, 0.0]]),
                   scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle, size=(len(atoms), 3))
    return atoms


def _model_for(atoms, kernel):
    # sparse points from a few rattled copies so both species have several
    pool = [atoms] + [_rattled_binary(seed=s) for s in (1, 2)]
    return build_model(pool, soap=SMALL_SOAP, kernel=kernel, n_sparse=8, seed=0)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("kernel", [Kernel(zeta=4, delta=1.0), Kernel(zeta=2, delta=1.7)])
def test_force_rows_match_central_differences_of_energy_rows(kernel):
    atoms = _rattled_binary()
    model = _model_for(atoms, kernel)
    rows = model.observation_rows([atoms], observations=("energy", "forces"))[0]
    h = 1e-4
    species = atoms.numbers
    probe = [0, int(np.flatnonzero(species == 28)[0]), 17, 31]
    displaced = []
    for j in probe:
        for c in range(3):
            for sign in (+1, -1):
                moved = atoms.copy()
                moved.positions[j, c] += sign * h
                displaced.append(moved)
    # the SAME sparse points, energy rows through the values-only path
    psi = model.rows_for(displaced).reshape(len(probe), 3, 2, model.M)
    for k, j in enumerate(probe):
        for c in range(3):
            fd = -(psi[k, c, 0] - psi[k, c, 1]) / (2 * h)
            analytic = rows.psi[1 + 3 * j + c]
            assert rows.kind[1 + 3 * j + c] == "force"
            assert _rel(analytic, fd) < 1e-6, (j, c, _rel(analytic, fd))


@pytest.mark.parametrize("kernel", [Kernel(zeta=4, delta=1.0), Kernel(zeta=3, delta=0.8)])
def test_virial_rows_match_strain_differences_of_energy_rows(kernel):
    atoms = _rattled_binary(symbols=("Cu", "Zr"), a=3.9, seed=5)
    model = build_model([atoms, _rattled_binary(symbols=("Cu", "Zr"), a=3.9, seed=6)], soap=SMALL_SOAP,
                        kernel=kernel, n_sparse=8)
    rows = model.observation_rows([atoms], observations=("energy", "virials"))[0]
    assert list(rows.kind) == ["energy"] + ["virial"] * 6
    # strain steps of 1e-5 move atoms by ≲ 1e-4 Å in this 7 Å cell
    h = 1e-5
    deformed = []
    for a, b in VOIGT_PAIRS:
        E = np.zeros((3, 3))
        E[a, b] += 0.5
        E[b, a] += 0.5  # symmetric: ε_aa = t, or ε_ab = ε_ba = t/2
        for sign in (+1, -1):
            new = atoms.copy()
            new.set_cell(atoms.cell.array @ (np.eye(3) + sign * h * E), scale_atoms=True)
            deformed.append(new)
    psi = model.rows_for(deformed).reshape(6, 2, model.M)
    for k, (a, b) in enumerate(VOIGT_PAIRS):
        # symmetrised W_ab = −(∂E/∂ε_ab + ∂E/∂ε_ba)/2 = −dE/dt for this deformation
        fd = -(psi[k, 0] - psi[k, 1]) / (2 * h)
        assert _rel(rows.psi[1 + k], fd) < 1e-6, (k, _rel(rows.psi[1 + k], fd))


def test_compressed_factor_reproduces_the_full_rows_gram():
    atoms = _rattled_binary()
    model = build_model([atoms, _rattled_binary(seed=3)], soap=SMALL_SOAP, n_sparse=10,
                        observations=("energy", "forces", "virials"))
    rows = model.observation_rows([atoms])[0]
    W = rows.scaled
    assert W.shape == (1 + 3 * len(atoms) + 6, model.M)
    R = model.factor(0)
    assert R.shape[0] <= min(W.shape)
    G = W.T @ W
    assert np.abs(R.T @ R - G).max() <= 1e-10 * np.abs(G).max()
    # rank-deficient input: duplicated rows compress to their rank
    X = np.random.default_rng(0).normal(size=(4, 9))
    Wd = np.vstack([X, X[:2] * 2.0, X.sum(axis=0, keepdims=True)])
    Rd = compress_rows(Wd)
    assert Rd.shape == (4, 9)
    assert np.allclose(Rd.T @ Rd, Wd.T @ Wd, rtol=0, atol=1e-12 * np.abs(Wd.T @ Wd).max())


def test_row_order_kinds_and_noise_per_config_type(cuni_pool):
    noise = Noise(energy=0.002, force=0.1, virial=0.05, per_config_type={"special": {"force": 0.3, "energy": 0.01}})
    model = build_model(cuni_pool[:6], soap=SMALL_SOAP, n_sparse=6, noise=noise,
                        observations=("energy", "forces", "virials"))
    a, b = cuni_pool[0].copy(), cuni_pool[1].copy()
    b.info["config_type"] = "special"
    ra, rb = model.observation_rows([a, b])
    n = len(a)
    expected = ["energy"] + ["force"] * (3 * n) + ["virial"] * 6
    assert list(ra.kind) == expected and list(rb.kind) == expected
    np.testing.assert_allclose(ra.variance, [0.002**2 * n] + [0.1**2] * (3 * n) + [0.05**2 * n] * 6)
    np.testing.assert_allclose(rb.variance, [0.01**2 * n] + [0.3**2] * (3 * n) + [0.05**2 * n] * 6)
    # explicit config_types override atoms.info
    rc = model.observation_rows([b], config_types=[None])[0]
    np.testing.assert_allclose(rc.variance, ra.variance)
    only_e = model.observation_rows([a], observations=("energy",))[0]
    # The same energy row, whitened in a differently shaped triangular solve: the forward
    # error of ψ = φ L⁻ᵀ is bounded by ~M ε cond(L) |ψ| (Higham 2002, §8.2), not by 1e-12.
    tol = model.M * np.finfo(float).eps * np.linalg.cond(model.L) * np.abs(ra.psi[0]).max()
    np.testing.assert_allclose(only_e.psi, ra.psi[:1], rtol=0, atol=tol)
    np.testing.assert_allclose(only_e.psi[0], model.rows_for([a])[0], rtol=0, atol=tol)


def test_labels_follow_row_order():
    atoms = _rattled_binary()
    rng = np.random.default_rng(1)
    forces = rng.normal(size=(len(atoms), 3))
    stress = rng.normal(size=6)
    atoms.calc = SinglePointCalculator(atoms, energy=-3.0, forces=forces, stress=stress)
    kinds = np.array(["energy"] + ["force"] * (3 * len(atoms)) + ["virial"] * 6)
    rows = ObservationRows(np.zeros((len(kinds), 2)), np.ones(len(kinds)), kinds, len(atoms))
    y = rows.labels(atoms, energy_offset=0.5)
    assert y[0] == pytest.approx(-3.0 - 0.5 * len(atoms))
    np.testing.assert_array_equal(y[1:4], forces[0])
    np.testing.assert_allclose(y[-6:], -stress * atoms.get_volume())


def test_posterior_mean_equals_regularised_least_squares():
    rng = np.random.default_rng(2)
    M = 7
    blocks, labels = [], []
    for r in (1, 5, 9):
        psi = rng.normal(size=(r, M))
        var = rng.uniform(0.1, 2.0, size=r)
        blocks.append(ObservationRows(psi, var, np.array(["force"] * r), 3))
        labels.append(rng.normal(size=r))
    beta = posterior_mean(blocks, labels, M)
    # independent: minimise Σ (y − ψβ)²/λ + |β|² as a stacked least-squares problem
    A = np.vstack([b.psi / np.sqrt(b.variance)[:, None] for b in blocks] + [np.eye(M)])
    y = np.concatenate([lab / np.sqrt(b.variance) for b, lab in zip(blocks, labels)] + [np.zeros(M)])
    ref = scipy.linalg.lstsq(A, y)[0]
    np.testing.assert_allclose(beta, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="labels have shape"):
        posterior_mean(blocks, [labels[0], labels[1][:2], labels[2]], M)


def test_virials_need_a_periodic_cell():
    atoms = _rattled_binary()
    model = build_model([atoms], soap=SMALL_SOAP, n_sparse=5)
    open_atoms = atoms.copy()
    open_atoms.pbc = False
    with pytest.raises(InputError, match="not periodic"):
        model.observation_rows([open_atoms], observations=("energy", "virials"))
