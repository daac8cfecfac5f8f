"""Information model with force/virial rows: Loewner order, d gains of force blocks, force variance.

The information state itself (block gains, additions, removals) is tested in test_state.py.

Force-specific tests are named ``test_force_*``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL_SOAP

from mlipdoe.criteria import make_criterion
from mlipdoe.exceptions import ConfigurationError
from mlipdoe.model import build_model
from mlipdoe.model.rows import mean_force_moment

OBS_EFV = ("energy", "forces", "virials")


def test_force_rows_only_add_information_loewner_order(energy_and_force_models):
    frames, energy, forces, full = energy_and_force_models
    assert forces.M == energy.M
    for s in range(len(frames)):
        We, Wf, Wv = energy.factor(s), forces.factor(s), full.factor(s)
        Fe, Ff, Fv = We.T @ We, Wf.T @ Wf, Wv.T @ Wv
        scale = max(np.abs(Ff).max(), np.abs(Fv).max())
        assert np.linalg.eigvalsh(Ff - Fe).min() >= -1e-10 * scale
        assert np.linalg.eigvalsh(Fv - Ff).min() >= -1e-10 * scale
        # the energy row is part of the force model's block
        assert np.linalg.eigvalsh(Ff - Fe).max() > 0
        assert len(Wf) <= min(1 + 3 * len(frames[s]), forces.M)
        assert len(Wv) <= min(1 + 3 * len(frames[s]) + 6, full.M)


def test_force_d_criterion_gains_are_block_gains(energy_and_force_models):
    frames, _, forces, _ = energy_and_force_models
    crit = make_criterion("d").initialize(forces, fixed=[2])
    gains = crit.gains(np.arange(len(frames)))
    expected = [forces.d_value([2, c]) - forces.d_value([2]) for c in range(len(frames))]
    np.testing.assert_allclose(gains, expected, rtol=1e-9, atol=1e-10)
    realised = crit.add(int(np.argmax(gains)))
    assert realised == pytest.approx(max(expected), rel=1e-9)
    assert crit.remove(int(np.argmax(gains))) == pytest.approx(-max(expected), rel=1e-9)


def test_force_variance_rows_give_mean_force_component_variance(energy_and_force_models):
    frames, _, forces, _ = energy_and_force_models
    C = np.linalg.inv(forces.information([0, 6]))
    targets = frames[:4]
    blocks = forces.force_variance_rows(targets)
    v = forces.force_variance(C, blocks)
    rows = forces.observation_rows(targets, observations=("energy", "forces"))
    for k, r in enumerate(rows):
        f = r.psi[r.kind == "force"]
        direct = np.mean(np.einsum("ij,jk,ik->i", f, C, f))
        assert v[k] == pytest.approx(direct, rel=1e-10)
    # the pool moment stored at build time is the mean over the pool's frames
    A = mean_force_moment(forces.force_variance_rows(frames))
    np.testing.assert_allclose(forces.pool_force_moment, A, rtol=1e-9, atol=1e-12 * np.abs(A).max())


def test_force_pool_rows_by_index_match_external_rows(energy_and_force_models):
    frames, _, forces, _ = energy_and_force_models
    by_index = forces.pool_observation_rows(frames, [5, 2])
    direct = forces.observation_rows([frames[5], frames[2]])
    for a, b in zip(by_index, direct):
        np.testing.assert_array_equal(a.kind, b.kind)
        np.testing.assert_allclose(a.psi, b.psi, rtol=1e-12, atol=1e-14)
        W = a.scaled
    W = by_index[0].scaled
    np.testing.assert_allclose(forces.factor(5).T @ forces.factor(5), W.T @ W, rtol=1e-9,
                               atol=1e-10 * np.abs(W.T @ W).max())


def test_force_model_does_not_depend_on_gradient_chunking(energy_and_force_models):
    frames, _, forces, _ = energy_and_force_models
    small = build_model(frames, soap=SMALL_SOAP, sparse_locations=forces.sparse.location_list(),
                        observations=("energy", "forces"), gradient_chunk_atoms=40)
    for s in range(len(frames)):
        A, B = forces.factor(s), small.factor(s)
        np.testing.assert_allclose(A.T @ A, B.T @ B, rtol=1e-9, atol=1e-10 * np.abs(A.T @ A).max())


def test_force_observations_must_include_energy(cuni_pool):
    with pytest.raises(ConfigurationError, match="must include energy"):
        build_model(cuni_pool[:3], soap=SMALL_SOAP, n_sparse=5, observations=("forces",))
    with pytest.raises(ConfigurationError, match="must include energy"):
        build_model(cuni_pool[:3], soap=SMALL_SOAP, n_sparse=5, observations=("energy", "stress"))
