"""InformationState: stable additions and removals against from-scratch slogdet / inverse.

Everything runs at σ_E = 1 meV (the default energy noise), where a frame that alone
measures a direction has leverage w C wᵀ = 1 − 1e-8 and the Woodbury downdate
C + u uᵀ / (1 − w C wᵀ) is round-off. Tolerances follow from cond(F̃): a from-scratch
inverse or log det is itself only good to about eps · cond(F̃), so the state is held to a
small multiple of that.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL_SOAP

from mlipdoe import assess as A
from mlipdoe.criteria import make_criterion
from mlipdoe.exceptions import InputError
from mlipdoe.generate import generate_strained
from mlipdoe.hypers import ModelConfig, Noise
from mlipdoe.model import build_model
from mlipdoe.state import InformationState, cholesky_downdate, cholesky_update

EPS = np.finfo(float).eps
OBS_EFV = ("energy", "forces", "virials")


def scratch(W_blocks, M):
    F = np.eye(M)
    for W in W_blocks:
        W = np.atleast_2d(W)
        F = F + W.T @ W
    sign, logdet = np.linalg.slogdet(F)
    assert sign > 0
    return F, logdet, np.linalg.inv(F), np.linalg.cond(F)


def assert_state_matches(state, blocks, *, before=None, factor=64.0):
    """State vs from scratch, to factor · eps · cond; after a removal the conditioning that
    counts is ‖F̃_before‖ / λ_min(F̃_after) (the downdate's backward error is eps · ‖F̃_before‖)."""
    F, logdet, C, cond = scratch(blocks, state.M)
    if before is not None:
        cond = max(cond, np.linalg.norm(scratch(before, state.M)[0], 2) / np.linalg.eigvalsh(F)[0])
    tol = factor * EPS * cond
    assert abs(state.log_det - logdet) <= tol * max(1.0, abs(logdet)), (state.log_det, logdet, tol)
    assert np.abs(state.C - C).max() <= tol * np.abs(C).max()
    scale = np.abs(F).max() if before is None else max(np.abs(F).max(), np.abs(scratch(before, state.M)[0]).max())
    np.testing.assert_allclose(state.F, F, rtol=0, atol=factor * EPS * scale)
    if state.R is not None:
        np.testing.assert_allclose(state.R.T @ state.R, F, rtol=0, atol=factor * EPS * scale)
    return cond


@pytest.fixture(scope="module")
def meV_rows():
    """Energy-like rows at σ_E = 1 meV: |w|² ≈ 1e8 (whitened rows of norm ~0.3 over
    σ_E √n with n = 16), fewer rows than M, so every row has leverage ≈ 1 − 1e-8."""
    rng = np.random.default_rng(7)
    M = 40
    base = rng.normal(size=(30, M))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    return M, base * 1e4


# -- the Cholesky primitives ----------------------------------------------------


def test_cholesky_update_and_downdate_match_refactorisation():
    rng = np.random.default_rng(0)
    M = 25
    A_ = rng.normal(size=(40, M))
    F = np.eye(M) + A_.T @ A_
    R = np.linalg.cholesky(F).T.copy()
    w = rng.normal(size=M) * 30
    d = cholesky_update(R, w)
    G = F + np.outer(w, w)
    np.testing.assert_allclose(R.T @ R, G, rtol=0, atol=64 * EPS * np.abs(G).max())
    assert np.allclose(np.tril(R, -1), 0) and (np.diagonal(R) > 0).all()
    assert d == pytest.approx(np.linalg.slogdet(G)[1] - np.linalg.slogdet(F)[1], rel=1e-12, abs=1e-12)
    d = cholesky_downdate(R, w)
    np.testing.assert_allclose(R.T @ R, F, rtol=0, atol=64 * EPS * np.abs(G).max())
    assert d == pytest.approx(np.linalg.slogdet(F)[1] - np.linalg.slogdet(G)[1], rel=1e-12, abs=1e-12)
    with pytest.raises(InputError, match="not part of the information state"):
        cholesky_downdate(R, np.linalg.cholesky(F)[:, 0] * 1.5)


# -- add/remove sequences at σ_E = 1 meV ----------------------------------------


def test_add_remove_sequence_matches_from_scratch_at_1_meV(meV_rows):
    M, W = meV_rows
    state = InformationState(M)
    members = list(range(20))
    for m in members:
        state.update(W[m], +1)
    # every row carries a direction alone: leverage 1 − O(1e-8) (the explicit 1 − q is round-off)
    lev = np.einsum("ij,jk,ik->i", W[members], np.linalg.inv(scratch(W[members], M)[0]), W[members])
    assert (1.0 - lev < 1e-6).all()
    rng = np.random.default_rng(1)
    for _ in range(40):
        j = int(rng.choice(members))
        before = state.log_det
        delta, _, _ = state.update(W[j], -1)
        previous = list(members)
        members.remove(j)
        assert state.log_det - before == pytest.approx(delta, abs=1e-12)
        assert_state_matches(state, W[members], before=W[previous])
        c = int(rng.choice([k for k in range(len(W)) if k not in members]))
        state.update(W[c], +1)
        members.append(c)
        assert_state_matches(state, W[members])
    assert state.n_refreshes <= 1  # only the periodic one (refresh_every = 64 updates)


def test_removing_a_high_leverage_block_matches_from_scratch(meV_rows):
    M, W = meV_rows
    rng = np.random.default_rng(3)
    low = rng.normal(size=(50, M))  # well-measured background (σ ≈ 1 eV-like rows)
    v = rng.normal(size=(3, M))
    block = 1e4 * v / np.linalg.norm(v, axis=1, keepdims=True)  # three rows, leverages ≈ 1 − 1e-8
    state = InformationState(M)
    for w in low:
        state.update(w, +1)
    state.update(block, +1)
    F_with, ld_with, C_with, _ = scratch(list(low) + [block], M)
    lev = np.linalg.eigvalsh(block @ C_with @ block.T)
    assert lev.max() > 1 - 1e-7
    state.rank_one_rows = 3  # the rank-one downdate path for a 3-row block
    other = state.copy()
    other.rank_one_rows = 1  # and the refactorisation path
    for st in (state, other):
        delta, Y, K = st.update(block, -1)
        F, ld, C, _ = scratch(low, M)
        cond = np.linalg.norm(F_with, 2) / np.linalg.eigvalsh(F)[0]
        tol = 64 * EPS * cond
        assert delta == pytest.approx(ld - ld_with, abs=tol * abs(ld_with))
        assert_state_matches(st, low, before=list(low) + [block])
        # returned U = C_new Wᵀ and K = (I + W C_new Wᵀ)⁻¹: C_with = C_new − U K Uᵀ
        np.testing.assert_allclose(Y, C @ block.T, rtol=0, atol=tol * np.abs(C @ block.T).max())
        np.testing.assert_allclose(C - Y @ K @ Y.T, C_with, rtol=0, atol=tol * np.abs(C).max())
        assert st.n_refreshes == 0


@pytest.mark.parametrize("rows", [1, 3])
def test_low_leverage_removal_takes_woodbury_and_matches_from_scratch(meV_rows, rows):
    M, W = meV_rows
    rng = np.random.default_rng(11)
    block = rng.normal(size=(rows, M)) * 0.1  # λ_max(W C Wᵀ) ≪ 1/2 next to the 1 meV rows
    state = InformationState(M)
    for m in range(25):
        state.update(W[m], +1)
    state.update(block, +1)
    state.factor()
    F_with, ld_with, C_with, _ = scratch(list(W[:25]) + [block], M)
    assert np.linalg.eigvalsh(block @ C_with @ block.T).max() < 0.5
    delta, Y, K = state.update(block, -1)
    assert state.R is None  # the Woodbury path: factor dropped, rebuilt on demand
    F, ld, C, _ = scratch(W[:25], M)
    cond = np.linalg.norm(F_with, 2) / np.linalg.eigvalsh(F)[0]
    assert delta == pytest.approx(ld - ld_with, abs=64 * EPS * cond * abs(ld))
    assert_state_matches(state, W[:25], before=list(W[:25]) + [block])
    np.testing.assert_allclose(Y, C @ block.T, rtol=0, atol=64 * EPS * cond * np.abs(C @ block.T).max())
    np.testing.assert_allclose(C - Y @ K @ Y.T, C_with, rtol=0, atol=64 * EPS * cond * np.abs(C).max())
    state.factor()
    assert_state_matches(state, W[:25])


def test_removing_a_frame_never_added_is_refused_and_leaves_the_state(meV_rows):
    M, W = meV_rows
    state = InformationState(M)
    for m in range(5):
        state.update(W[m], +1)
    before = (state.F.copy(), state.C.copy(), state.log_det)
    with pytest.raises(InputError, match="not part of the information state"):
        state.update(W[10], -1)
    np.testing.assert_array_equal(state.F, before[0])
    np.testing.assert_array_equal(state.C, before[1])
    assert state.log_det == before[2]


def test_drift_check_refreshes_a_corrupted_state(meV_rows):
    M, W = meV_rows
    state = InformationState(M)
    for m in range(10):
        state.update(W[m], +1)
    state.factor()
    state.refresh_every = 10**9
    assert state.n_refreshes == 0
    rng = np.random.default_rng(5)
    E = rng.normal(size=(M, M)) * 1e-4
    state.C += E + E.T  # C no longer the inverse of F̃: predicted gains disagree with R's
    delta, _, _ = state.update(W[10], +1)
    assert state.n_refreshes == 1
    F, ld, C, cond = scratch(W[:11], M)
    assert delta == pytest.approx(ld - scratch(W[:10], M)[1], abs=64 * EPS * cond * abs(ld))
    assert_state_matches(state, W[:11])
    # a healthy state does not refresh
    state.update(W[11], +1)
    state.update(W[3], -1)
    assert state.n_refreshes == 1
    assert_state_matches(state, [W[k] for k in range(12) if k != 3], before=W[:12])
    # a corrupted factor is caught as well
    state.R[0, 0] *= 1.01
    state.update(W[12], +1)
    assert state.n_refreshes == 2
    assert_state_matches(state, [W[k] for k in range(13) if k != 3])


def test_periodic_refresh_after_refresh_every_updates(meV_rows):
    M, W = meV_rows
    state = InformationState(M)
    state.factor()
    state.refresh_every = 5
    for m in range(12):
        state.update(W[m], +1)
    assert state.n_refreshes == 2
    assert_state_matches(state, W[:12])


# -- moved from the information-model tests: block gains and Woodbury with forces ----


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


def test_force_add_and_remove_match_from_scratch(energy_and_force_models):
    frames, _, forces, _ = energy_and_force_models
    state = InformationState(forces.M)
    for s in [1, 4, 5, 9]:
        state.update(forces.factor(s), +1)
    delta, _, _ = state.update(forces.factor(4), -1)
    remaining = [1, 5, 9]
    F = forces.information(remaining)
    np.testing.assert_allclose(state.F, F, rtol=1e-12, atol=1e-9)
    C = np.linalg.inv(F)
    tol = 64 * EPS * np.linalg.cond(F)
    assert np.abs(state.C - C).max() <= tol * np.abs(C).max()
    assert state.log_det == pytest.approx(np.linalg.slogdet(F)[1], rel=1e-10)
    assert delta == pytest.approx(np.linalg.slogdet(F)[1] - forces.d_value([1, 4, 5, 9]), rel=1e-9)


def test_removal_of_energy_rows_lowers_log_det(energy_and_force_models):
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


# -- criteria removals and informativeness on a 1 meV model ---------------------------


@pytest.fixture(scope="module")
def zr_meV():
    frames = generate_strained("Zr", n_frames=40, max_strain=0.1, rattle=0.1, seed=21)
    model = build_model(frames, soap=SMALL_SOAP, n_sparse=20, noise=Noise(energy=0.001), seed=0)
    return frames, model


def _values_from_scratch(model, members, crit):
    F = model.information(list(members))
    C = np.linalg.inv(F)
    if crit.name in ("a", "i"):
        return -float(np.sum(C * crit.B)), np.linalg.cond(F)
    if crit.name == "g":
        psi, n2 = crit._psi_t, crit._n2
        return -float(np.max(np.einsum("ij,jk,ik->i", psi, C, psi) / n2)), np.linalg.cond(F)
    if crit.name == "e":
        return float(np.linalg.eigvalsh(F)[0]), np.linalg.cond(F)
    return float(np.linalg.slogdet(F)[1]), np.linalg.cond(F)


@pytest.mark.parametrize("name", ["d", "a", "i", "g", "e"])
def test_criterion_removals_match_from_scratch_at_1_meV(zr_meV, name):
    _, model = zr_meV
    members = [0, 9, 18, 27]  # 4 frames, M = 20: each member nearly alone in some direction
    crit = make_criterion(name).initialize(model)
    for m in members:
        crit.add(m)
    C = np.linalg.inv(model.information(members))
    lev = np.einsum("ij,jk,ik->i", model.energy_factors(members), C, model.energy_factors(members))
    assert (1 - lev).min() < 1e-4  # leverages where 1 − w C wᵀ keeps only ~eps·|w|²/1e-4 ≈ 1e-5 relative
    crit.prepare_removals()
    snap = crit.snapshot()
    full, _ = _values_from_scratch(model, members, crit)
    for s in members:
        delta = crit.remove(s)
        rest = [m for m in members if m != s]
        expected, cond = _values_from_scratch(model, rest, crit)
        scale = max(abs(full), abs(expected))
        tol = 64 * EPS * cond * scale
        assert delta == pytest.approx(expected - full, abs=tol), (s, delta, expected - full, tol)
        assert crit.value() == pytest.approx(expected, abs=tol)
        # gains after the removal are the from-scratch increments
        cand = np.array([1, 2, 3, s])
        g = crit.gains(cand)
        for c, gc in zip(cand, g, strict=True):
            after, cond2 = _values_from_scratch(model, rest + [int(c)], crit)
            assert gc == pytest.approx(after - expected, abs=64 * EPS * max(cond, cond2) * max(abs(after), 1.0))
        crit.restore(snap)
    assert crit.state.n_refreshes == 0


def test_informativeness_matches_leave_one_out_from_scratch_at_1_meV(zr_meV):
    frames, _ = zr_meV
    train = [frames[i] for i in (0, 9, 18, 27)]
    train.append(train[2].copy())  # an exact duplicate: redundant by the noise criterion
    setup = A.prepare(train, pool=frames, config=ModelConfig(soap=SMALL_SOAP, n_sparse=20, noise=Noise(energy=0.001)))
    model, members = setup.model, list(setup.members)
    info = A.informativeness(setup)
    F = model.information(members)
    ld = np.linalg.slogdet(F)[1]
    for row in info["members"]:
        s = row["index"]
        rest = [m for m in members if m != s]
        F_loo = model.information(rest)
        C_loo = np.linalg.inv(F_loo)
        cond = np.linalg.cond(F_loo)
        tol = 64 * EPS * np.linalg.cond(F)
        assert row["loss"] == pytest.approx(ld - np.linalg.slogdet(F_loo)[1], abs=tol * abs(ld))
        psi, n = model.psi[s], float(model.n_atoms[s])
        v = psi @ C_loo @ psi / n**2
        assert row["loo_std_meV"] == pytest.approx(np.sqrt(v) * 1e3, rel=64 * EPS * cond)
        W = np.atleast_2d(model.factor(s))
        ratio = float(np.linalg.eigvalsh(W @ C_loo @ W.T).max())
        assert row["loo_noise_ratio"] == pytest.approx(ratio, rel=64 * EPS * cond)
    dup = [r for r in info["members"] if r["position"] in (2, 4)]
    assert all(r["redundant"] and r["loo_noise_ratio"] <= 1.0 for r in dup)
    # the others: each measures a direction nobody else does, far above the noise
    assert all(r["loo_noise_ratio"] > 1e3 for r in info["members"] if r["position"] not in (2, 4))
