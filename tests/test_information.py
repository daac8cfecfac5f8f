"""Information model with force/virial rows: Loewner order, block gains, Woodbury, force variance.

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
from mlipdoe.state import InformationState

OBS_EFV = ("energy", "forces", "virials")


@pytest.fixture(scope="module")
def energy_and_force_models(cuni_pool):
    frames = cuni_pool[:12]
    energy = build_model(frames, soap=SMALL_SOAP, n_sparse=10, seed=0)
    locations = energy.sparse.location_list()
    forces = build_model(frames, soap=SMALL_SOAP, sparse_locations=locations, observations=("energy", "forces"))
    full = build_model(frames, soap=SMALL_SOAP, sparse_locations=locations, observations=OBS_EFV)
    return frames, energy, forces, full


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


def test_force_block_gain_equals_slogdet_increment(energy_and_force_models):
    frames, _, _, full = energy_and_force_models
    state = InformationState(full.M)
    chosen: list[int] = []
    for s in [3, 0, 7, 11]:
        for c in range(len(frames)):
            expected = full.d_value(chosen + [c]) - full.d_value(chosen)
            assert state.gain(full.factor(c)) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        delta, _, _ = state.update(full.factor(s), +1)
        chosen.append(s)
        assert state.log_det == pytest.approx(full.d_value(chosen), rel=1e-10)


def test_force_woodbury_add_and_remove_match_from_scratch(energy_and_force_models):
    frames, _, forces, _ = energy_and_force_models
    state = InformationState(forces.M)
    for s in [1, 4, 5, 9]:
        state.update(forces.factor(s), +1)
    delta, _, _ = state.update(forces.factor(4), -1)
    remaining = [1, 5, 9]
    F = forces.information(remaining)
    np.testing.assert_allclose(state.F, F, rtol=1e-12, atol=1e-9)
    C = np.linalg.inv(F)
    # a downdate loses ~cond(F̃)·eps relative accuracy in C (cond ≈ 1e7 here)
    assert np.abs(state.C - C).max() <= 1e-6 * np.abs(C).max()
    assert state.log_det == pytest.approx(np.linalg.slogdet(F)[1], rel=1e-10)
    assert delta == pytest.approx(np.linalg.slogdet(F)[1] - forces.d_value([1, 4, 5, 9]), rel=1e-9)


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


def test_woodbury_removal_of_energy_rows_lowers_log_det(energy_and_force_models):
    frames, energy, _, _ = energy_and_force_models
    state = InformationState(energy.M)
    for s in [0, 3, 8]:
        state.update(energy.factor(s), +1)
    delta, _, _ = state.update(energy.factor(3), -1)
    assert delta == pytest.approx(energy.d_value([0, 8]) - energy.d_value([0, 3, 8]), rel=1e-8)
    assert delta < 0
    assert state.log_det == pytest.approx(energy.d_value([0, 8]), rel=1e-10)


def test_force_batched_block_gains_equal_single_gains(energy_and_force_models):
    frames, energy, forces, full = energy_and_force_models
    state = InformationState(full.M)
    state.update(full.factor(4), +1)
    blocks = [full.factor(s) for s in range(len(frames))] + [energy.factor(0)]
    single = [state.gain(W) for W in blocks]
    np.testing.assert_allclose(state.block_gains(blocks, batch=5), single, rtol=1e-10, atol=1e-10)
