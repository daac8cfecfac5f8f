"""The model layer's kernel rows (mlipdoe.model.gap_featomic) against independent computations.

Every consumer (information model, store, built-in fit, assessment, grading) takes its rows
from this one owner; these tests check the owner against brute-force atom sums written out
here, against finite differences of its own energies, and check that every consumer gets
the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL_SOAP

from mlipdoe.descriptors import make_descriptor
from mlipdoe.exceptions import InputError
from mlipdoe.fit import GPRModel
from mlipdoe.hypers import Noise
from mlipdoe.model import build_model
from mlipdoe.model.kernels import Kernel
from mlipdoe.store import chunk_rows


@pytest.fixture(scope="module")
def binary(cuni_pool):
    frames = [a.copy() for a in cuni_pool[:5]]
    model = build_model(frames, soap=SMALL_SOAP, kernel=Kernel(zeta=3, delta=0.7), n_sparse=7,
                        observations=("energy", "forces"))
    return frames, model


def _brute_force_raw_rows(frames, model):
    """φ_s,m = Σ_{i∈s, Z_i = Z_m} δ² (x_i·z_m)^ζ and ℓ_i,m, atom by atom, sparse point by sparse point."""
    desc = make_descriptor(model.soap).compute(frames)
    delta2, zeta = model.kernel.delta**2, model.kernel.zeta
    points = [(z, v) for z in model.sparse.species for v in model.sparse.vectors[z]]
    phi = np.zeros((len(frames), len(points)))
    local = [np.zeros((len(a), len(points))) for a in frames]
    for z, block in desc.blocks.items():
        for x, f, a in zip(block.values, block.frame, block.atom):
            for m, (zm, v) in enumerate(points):
                if zm == z:
                    k = delta2 * float(np.dot(x, v)) ** zeta
                    phi[f, m] += k
                    local[f][a, m] = k
    return phi, local


def _whitening_tol(model, values):
    """Forward error bound of a triangular solve with L: ~M ε cond(L) |values|."""
    return model.M * np.finfo(float).eps * np.linalg.cond(model.L) * np.abs(values).max()


def test_energy_and_local_rows_equal_brute_force_atom_sums(binary):
    frames, model = binary
    phi, local = _brute_force_raw_rows(frames, model)
    psi = np.linalg.solve(model.L, phi.T).T
    tol = _whitening_tol(model, psi)
    np.testing.assert_allclose(model.psi, psi, rtol=0, atol=tol)          # pool rows of build_model
    np.testing.assert_allclose(model.rows_for(frames), psi, rtol=0, atol=tol)
    rows = model.observation_rows(frames)
    np.testing.assert_allclose(np.array([r.psi[0] for r in rows]), psi, rtol=0, atol=tol)
    for got, want in zip(model.local_rows(frames), local):
        np.testing.assert_allclose(got, np.linalg.solve(model.L, want.T).T, rtol=0, atol=tol)


def test_store_and_fit_use_the_same_rows(binary):
    frames, model = binary
    stored = chunk_rows(frames, model.soap, model.sparse, model.kernel, model.L)["psi"]
    np.testing.assert_array_equal(stored, model.psi)      # one function: the same bits
    gpr = GPRModel(model.soap, model.kernel, model.noise, model.sparse, model.L, np.zeros(model.M), 0.0)
    for a, b in zip(gpr.rows(frames), model.observation_rows(frames)):
        np.testing.assert_array_equal(a.psi, b.psi)
        np.testing.assert_array_equal(a.variance, b.variance)


def test_force_rows_are_minus_central_differences_of_energy_rows(binary):
    frames, model = binary
    atoms = frames[1]
    rows = model.observation_rows([atoms])[0]
    forces = rows.psi[rows.kind == "force"]
    h = 1e-4
    for j, c in [(0, 0), (3, 1), (7, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[j, c] += h
        minus.positions[j, c] -= h
        fd = -(model.rows_for([plus])[0] - model.rows_for([minus])[0]) / (2 * h)
        # central differences: truncation O(h²) relative to the row
        np.testing.assert_allclose(forces[3 * j + c], fd, rtol=0, atol=1e-5 * np.abs(fd).max())


def test_observation_noise_follows_gap_fit_sigma_per_atom(binary):
    frames, model = binary
    noise = Noise(energy=0.003, force=0.2, per_config_type={"surface": {"force": 0.5}})
    gpr = GPRModel(model.soap, model.kernel, noise, model.sparse, model.L, np.zeros(model.M), 0.0)
    atoms = frames[0].copy()
    atoms.info["config_type"] = "surface"
    r = gpr.rows([atoms])[0]
    n = len(atoms)
    np.testing.assert_array_equal(r.variance, [0.003**2 * n] + [0.5**2] * (3 * n))


def test_uncovered_species_is_refused_by_every_consumer(binary):
    frames, model = binary
    alien = frames[0].copy()
    alien.numbers[0] = 40
    with pytest.raises(InputError, match="species \\[40\\] not covered"):
        model.rows_for([alien])
    with pytest.raises(InputError, match="species \\[40\\] not covered"):
        model.local_rows([alien])
    with pytest.raises(InputError, match="species \\[40\\] not covered"):
        model.observation_rows([alien])


def test_pool_descriptors_are_computed_once_and_replayed_from_memory_or_disk(zr_pool):
    from mlipdoe.model import DescriptorSource, energy_rows

    model = build_model(zr_pool, soap=SMALL_SOAP, n_sparse=10)
    assert model.timings["descriptor_passes"] == 1          # CUR's two passes and the rows replay it
    descriptor = make_descriptor(model.soap)
    for limit, spill, passes in ((2e9, True, 1), (0, True, 1), (0, False, 3)):
        source = DescriptorSource(descriptor, zr_pool, chunk_size=7, cache_limit_bytes=limit, spill=spill)
        first = energy_rows(source, model.sparse, model.kernel, len(zr_pool))
        spilled = source.bytes_on_disk
        for _ in range(2):
            np.testing.assert_array_equal(energy_rows(source, model.sparse, model.kernel, len(zr_pool)), first)
        assert source.n_passes == passes
        assert (spilled > 0) == (limit == 0 and spill)
        source.close()
        assert source.bytes_on_disk == 0


def test_fewer_sparse_points_than_requested_is_said(zr_pool):
    few = zr_pool[:2]
    model = build_model(few, soap=SMALL_SOAP, n_sparse=10 * sum(len(a) for a in few))
    assert model.M < 10 * sum(len(a) for a in few)
    assert any(f"{model.M} of the" in note for note in model.notes)
    assert build_model(zr_pool, soap=SMALL_SOAP, n_sparse=5).notes == []


def test_the_featomic_model_implements_the_model_protocol(binary):
    from mlipdoe.model import PoolModel, RowModel

    _, model = binary
    assert isinstance(model, RowModel) and isinstance(model, PoolModel)
    assert model.factor(0).shape[1] == model.M
