"""Energy-only I, A and G gains in O(N M) per pick against the O(N M²) computations.

Every pick compares the fast gains with ``reference_gains`` of the same state (C used
directly) and checks that both pick the same frame; separate greedy runs with the fast
path switched off give the same designs; at the end the gains are compared with an
independent computation in extended precision (F̃ summed in long double, C w by
Cholesky solves refined with long-double residuals). σ_E = 1 meV (the default), where
q = wᵀC̃w reaches 8·10⁶ for the first pick.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from conftest import SMALL_SOAP

import mlipdoe
from mlipdoe.criteria import TargetRows, existing_rows, make_criterion
from mlipdoe.criteria.trace import weight_factor
from mlipdoe.optimizers import exchange, greedy
from mlipdoe.optimizers.greedy import best_candidate

RTOL = 1e-8


@pytest.fixture(scope="module")
def frames():
    from mlipdoe.generate import zr_example

    return zr_example(2000, seed=4, supercell=(2, 2, 1), rattle=0.05, max_strain=0.05)


@pytest.fixture(scope="module")
def model(frames):
    return mlipdoe.build_information_model(frames, soap=SMALL_SOAP, n_sparse=100)


@pytest.fixture(scope="module")
def small_model(frames):
    """1,000 frames for g, whose reference gains cost O(T N M) per pick."""
    return mlipdoe.build_information_model(frames[:1000], soap=SMALL_SOAP, n_sparse=100)


def reference(crit):
    """``crit`` with the fast path switched off (the O(N M²) / O(T N M) gains)."""
    crit.fast_max_entries = 0
    crit.fast = False
    return crit


def solve_refined(W_design, X):
    """F̃⁻¹ X with F̃ = I + WᵀW summed in long double and three refinement steps."""
    WS = W_design.astype(np.longdouble)
    F = np.eye(W_design.shape[1], dtype=np.longdouble) + WS.T @ WS
    cf = scipy.linalg.cho_factor(F.astype(float))
    Xl = X.astype(np.longdouble)
    out = scipy.linalg.cho_solve(cf, X).astype(np.longdouble)
    for _ in range(3):
        out = out + scipy.linalg.cho_solve(cf, (Xl - F @ out).astype(float)).astype(np.longdouble)
    return out


def trace_oracle(model, B, design, cands):
    """(w_cᵀ C B C w_c) / (1 + w_cᵀ C w_c) in extended precision."""
    W = model.energy_factors()
    X = solve_refined(W[design], W[cands].T)  # M × k
    num = np.einsum("ji,jk,ki->i", X, B.astype(np.longdouble), X)
    q = np.einsum("ij,ji->i", W[cands].astype(np.longdouble), X)
    return (num / (1 + q)).astype(float)


def run_and_compare(crit, n, candidates_every=1):
    """Greedy by the fast gains; returns (picks, worst relative error vs reference_gains)."""
    m = crit.model
    mask = np.ones(m.n_frames, bool)
    worst = 0.0
    for k in range(n):
        cands = np.flatnonzero(mask)
        g = crit.gains(cands)
        if k % candidates_every == 0 or k == n - 1:
            ref = crit.reference_gains(cands)
            worst = max(worst, float(np.max(np.abs(g - ref) / np.abs(ref))))
            assert best_candidate(crit, cands, g) == best_candidate(crit, cands, ref), k
        pick = int(cands[best_candidate(crit, cands, g)])
        crit.add(pick)
        mask[pick] = False
    return list(crit.members), worst


@pytest.mark.parametrize("name,target", [("i", None), ("i", "separate"), ("i", "few"), ("a", None)])
def test_trace_gains_match_reference_after_500_picks(name, target, model):
    """Fast I/A gains stay within 1e-8 (relative, every candidate) of the O(N M²) gains
    over 500 picks, pick the same frames as the O(N M²) greedy and match the
    extended-precision oracle at the end."""
    options = {}
    if target is not None:  # frames outside the pool: rescaled pool rows (T ≥ M, or T < M: B singular)
        idx = np.random.default_rng(5).choice(model.n_frames, 300 if target == "separate" else 40, replace=False)
        options["target"] = TargetRows(psi=model.psi[idx] * 1.01, n_atoms=model.n_atoms[idx])
    crit = make_criterion(name, **options).initialize(model)
    picks, worst = run_and_compare(crit, 500)
    print(f"{name} target={target}: worst relative |fast − reference| over 500 picks {worst:.2e}, "
          f"rows recomputed from C {crit.n_row_refreshes} ({crit.n_row_refreshes / model.n_frames:.1f} sweeps)")
    assert worst <= RTOL

    ref = reference(make_criterion(name, **options)).initialize(model)
    assert greedy(ref, 500, available=np.ones(model.n_frames, bool)).selected == picks

    cands = np.flatnonzero(~np.isin(np.arange(model.n_frames), picks))
    expected = trace_oracle(model, crit.B, picks, cands)
    np.testing.assert_allclose(crit.gains(cands), expected, rtol=RTOL, atol=0)
    assert crit.value() == pytest.approx(-np.sum(crit.B * np.linalg.inv(model.information(picks))), rel=1e-9)


def test_g_gains_match_reference(small_model):
    """Fast G gains (targets pruned by their variance) equal scoring every target: same
    picks over 200 greedy picks, gains within 1e-8 of the largest gain, and within
    1e-6 relative for gains ≥ 1e-3 of the largest (G gains are differences of target
    variances: smaller ones cancel in either computation)."""
    m = small_model
    crit = make_criterion("g").initialize(m)
    mask = np.ones(m.n_frames, bool)
    worst_top = worst_rel = 0.0
    for k in range(200):
        cands = np.flatnonzero(mask)
        g, ref = crit.gains(cands), crit.reference_gains(cands)
        top = float(np.abs(ref).max())
        worst_top = max(worst_top, float(np.abs(g - ref).max()) / top)
        big = ref >= 1e-3 * top
        worst_rel = max(worst_rel, float(np.max(np.abs(g - ref)[big] / ref[big])))
        j = best_candidate(crit, cands, g)
        assert j == best_candidate(crit, cands, ref), k
        crit.add(int(cands[j]))
        mask[cands[j]] = False
    print(f"g: worst |fast − reference| / max gain {worst_top:.2e}; relative, gains ≥ 1e-3 max: {worst_rel:.2e}")
    assert worst_top <= RTOL
    assert worst_rel <= 1e-6
    ref = reference(make_criterion("g")).initialize(m)
    assert greedy(ref, 200, available=np.ones(m.n_frames, bool)).selected == crit.members

    # independent: variances and the 20 largest gains in extended precision
    picks = list(crit.members)
    cands = np.flatnonzero(mask)
    cands = cands[np.argsort(-crit.gains(cands))[:20]]
    W, psi, n2 = m.energy_factors(), m.psi, m.n_atoms.astype(float) ** 2
    X = solve_refined(W[picks], psi.T)  # C ψ_t for every target (the pool)
    v = np.einsum("ij,ji->i", psi.astype(np.longdouble), X) / n2
    np.testing.assert_allclose(crit._v, v.astype(float), rtol=1e-8)
    scale = m.energy_scale.astype(np.longdouble)
    A = (psi.astype(np.longdouble) @ X[:, cands]) * scale[cands]
    q = np.einsum("ij,ji->i", psi[cands].astype(np.longdouble), X[:, cands]) * scale[cands] ** 2
    expected = np.min((v.max() - v)[:, None] + A * A / (n2[:, None] * (1 + q)[None, :]), axis=0).astype(float)
    np.testing.assert_allclose(crit.gains(cands), expected, rtol=1e-6)


def test_g_separate_target(small_model):
    m = small_model
    idx = np.random.default_rng(2).choice(m.n_frames, 150, replace=False)
    target = TargetRows(psi=m.psi[idx] * 0.99, n_atoms=m.n_atoms[idx])
    crit = make_criterion("g", target=target).initialize(m)
    mask = np.ones(m.n_frames, bool)
    for k in range(100):
        cands = np.flatnonzero(mask)
        g, ref = crit.gains(cands), crit.reference_gains(cands)
        assert np.abs(g - ref).max() <= RTOL * np.abs(ref).max(), k
        j = best_candidate(crit, cands, g)
        assert j == best_candidate(crit, cands, ref), k
        crit.add(int(cands[j]))
        mask[cands[j]] = False
    W = m.energy_factors()
    C = np.linalg.inv(m.information(crit.members))
    np.testing.assert_allclose(crit._q, np.einsum("ij,jk,ik->i", W, C, W), rtol=1e-8)


@pytest.mark.parametrize("name", ["i", "a", "g"])
def test_removals_snapshots_and_exchange(name, small_model):
    """Trial removals (eager row updates), restores and Fedorov exchange agree with the
    reference path: gains after each removal, and the exchanged design and value."""
    m = small_model
    available = np.ones(m.n_frames, bool)
    crit = make_criterion(name).initialize(m, fixed=[3])
    run = greedy(crit, 40, available=available)
    cands = np.flatnonzero(~np.isin(np.arange(m.n_frames), crit.members + [3]))
    before = crit.gains(cands)
    crit.prepare_removals()
    snap = crit.snapshot()
    for j in run.selected[::4]:
        crit.remove(j)
        g, ref = crit.gains(cands), crit.reference_gains(cands)
        assert np.abs(g - ref).max() <= RTOL * np.abs(ref).max(), j
        if name != "g":
            np.testing.assert_allclose(g, ref, rtol=RTOL)
        crit.restore(snap)
        np.testing.assert_array_equal(crit.gains(cands), before)
    # the state recomputing C from its factor every other update: the rows follow it
    crit.state.refresh_every = 2
    for j in run.selected[1::8]:
        crit.remove(j)
        crit.add(j)
        g, ref = crit.gains(cands), crit.reference_gains(cands)
        assert np.abs(g - ref).max() <= RTOL * np.abs(ref).max(), j
    assert crit.state.n_refreshes > 0
    ex = exchange(crit, run.selected, available=available, max_iter=3)
    ref = reference(make_criterion(name)).initialize(m, fixed=[3])
    ex_ref = exchange(ref, greedy(ref, 40, available=available).selected, available=available, max_iter=3)
    assert ex.selected == ex_ref.selected
    assert ex.value == pytest.approx(ex_ref.value, rel=1e-9)


def test_existing_rows_and_fixed_frames(model, frames):
    """C ≠ I at the start (rows outside the pool and fixed frames): rows built from C."""
    existing = existing_rows(model, frames[-5:])
    for name in ("i", "a"):
        crit = make_criterion(name, existing=existing).initialize(model, fixed=[0, 7])
        _, worst = run_and_compare(crit, 60, candidates_every=5)
        assert worst <= RTOL


def test_zero_weight(small_model):
    """B = 0 (a target of zero rows): every gain and the value stay 0."""
    m = small_model
    crit = make_criterion("i", target=TargetRows(psi=np.zeros((3, m.M)), n_atoms=np.full(3, 8))).initialize(m)
    run = greedy(crit, 3, available=np.ones(m.n_frames, bool))
    assert run.gains == [0.0, 0.0, 0.0] and crit.value() == 0.0


def test_same_seed_same_design(model):
    runs = [greedy(make_criterion("i").initialize(model, seed=3), 50, available=np.ones(model.n_frames, bool))
            for _ in range(2)]
    assert runs[0].selected == runs[1].selected and runs[0].values == runs[1].values


def test_weight_factor_is_graded_and_handles_rank_deficiency(model):
    """YᵀY = B entrywise to ~eps √(B_ii B_jj) for a positive definite B; for B of rank
    30 < M the factorisation stops at the first pivot ≤ 0 and drops a remainder that is
    round-off of the null space (a few rows of such pivots may be kept)."""
    rng = np.random.default_rng(0)
    eps = np.finfo(float).eps
    for rows, bound in ((model.psi, 100 * model.M * eps), (model.psi[rng.choice(model.n_frames, 30, replace=False)], 1e-9)):
        B = rows.T @ rows / len(rows)
        Y = weight_factor(B)
        assert min(len(rows), model.M) <= len(Y) <= model.M
        d = np.sqrt(np.diag(B))
        assert np.all(np.abs(Y.T @ Y - B) <= bound * np.outer(d, d))
    assert weight_factor(np.zeros((3, 3))).shape == (0, 3)


# -- block factors (energy + force rows) ------------------------------------------------


@pytest.fixture(scope="module")
def force_model():
    """Frames of 8 and 16 atoms, energy + force rows: factors of several sizes."""
    from mlipdoe.generate import ZR_HCP_A, ZR_HCP_C, generate_strained
    from mlipdoe.model import build_model

    frames = []
    for seed, cell in enumerate([(2, 2, 1), (2, 2, 2)]):
        frames += generate_strained("Zr", structure="hcp", a=ZR_HCP_A, c=ZR_HCP_C, n_frames=100,
                                    max_strain=0.04, rattle=0.04, supercell=cell, seed=seed)
    return build_model(frames, soap=SMALL_SOAP, n_sparse=60, observations=("energy", "forces"))


def block_reference(crit):
    crit.fast_block_max_entries = 0
    return crit


def block_state(crit):
    """``crit`` keeping the block state on these small factors (k̄ ≈ 0.6 M)."""
    crit.fast_block_row_fraction = 1.0
    return crit


def force_options(name, target, m):
    if target == "forces":
        return {"force_moment": mlipdoe.api.target_moment(m, "forces")}
    if target == "energy,forces":
        return {"force_moment": mlipdoe.api.target_moment(m, "energy,forces")}
    return {}


@pytest.mark.parametrize("name,target,n", [("i", None, 80), ("i", "forces", 40), ("i", "energy,forces", 40),
                                           ("a", None, 40)])
def test_block_gains_match_reference(name, target, n, force_model):
    """Block trace gains kept from H_c and S_c equal the O(N k M²) gains of the same state
    to 1e-8 relative for every candidate over n picks (σ_E = 1 meV), pick the same
    frames, and the greedy designs equal those of the O(N k M²) path."""
    m = force_model
    assert len(np.unique(m.factor_ranks)) > 1
    crit = block_state(make_criterion(name, **force_options(name, target, m))).initialize(m)
    assert crit._fast_blocks
    picks, worst = run_and_compare(crit, n)
    print(f"{name} target={target}: worst relative |fast − reference| over {n} picks {worst:.2e}, "
          f"frames recomputed from C {crit.n_row_refreshes} ({crit.n_row_refreshes / m.n_frames:.1f} sweeps)")
    assert worst <= RTOL
    ref = block_reference(make_criterion(name, **force_options(name, target, m))).initialize(m)
    assert not ref._fast_blocks
    assert greedy(ref, n, available=np.ones(m.n_frames, bool)).selected == picks

    # independent: C W_cᵀ from F̃ of the design summed in long double, refined solves
    W_design = np.concatenate([m.factor(s) for s in picks])
    cands = np.flatnonzero(~np.isin(np.arange(m.n_frames), picks))[::17]
    B = crit.B.astype(np.longdouble)
    expected = []
    for c in cands:
        W = m.factor(int(c))
        X = solve_refined(W_design, W.T)  # M × k
        S = np.eye(len(W), dtype=np.longdouble) + W.astype(np.longdouble) @ X
        expected.append(np.trace(np.linalg.solve(S.astype(float), (X.T @ B @ X).astype(float))))
    np.testing.assert_allclose(crit.gains(cands), expected, rtol=RTOL, atol=0)


def test_block_removals_snapshots_and_exchange(force_model):
    """Trial removals (sign −1 updates of H_c, S_c), in-place restores and exchange agree
    with the O(N k M²) path."""
    m = force_model
    available = np.ones(m.n_frames, bool)
    crit = block_state(make_criterion("i")).initialize(m, fixed=[3])
    assert crit._fast_blocks
    run = greedy(crit, 20, available=available)
    cands = np.flatnonzero(~np.isin(np.arange(m.n_frames), crit.members + [3]))
    before = crit.gains(cands)
    crit.prepare_removals()
    snap = crit.snapshot()
    live = crit._vec
    for j in run.selected[::4]:
        crit.remove(j)
        np.testing.assert_allclose(crit.gains(cands), crit.reference_gains(cands), rtol=RTOL)
        crit.restore(snap)
        assert crit._vec is live  # the rows were copied back into the same arrays
        np.testing.assert_array_equal(crit.gains(cands), before)
    ex = exchange(crit, run.selected, available=available, max_iter=1)
    ref = block_reference(make_criterion("i")).initialize(m, fixed=[3])
    ex_ref = exchange(ref, greedy(ref, 20, available=available).selected, available=available, max_iter=1)
    assert ex.selected == ex_ref.selected
    assert ex.value == pytest.approx(ex_ref.value, rel=1e-9)


def test_block_gains_with_existing_rows_and_fixed_frames(force_model):
    """C ≠ I at the start: H_c and S_c built from C."""
    m = force_model
    rng = np.random.default_rng(1)
    existing = mlipdoe.criteria.ExistingRows(factors=[m.factor(int(s)) * 0.9 for s in rng.choice(m.n_frames, 4)],
                                             psi=m.psi[:4], n_atoms=m.n_atoms[:4])
    crit = block_state(make_criterion("i", existing=existing)).initialize(m, fixed=[0, 7])
    assert crit._fast_blocks and not crit._identity
    _, worst = run_and_compare(crit, 40, candidates_every=4)
    assert worst <= RTOL


def test_block_state_only_where_it_pays(force_model):
    """The block state is kept for factors of at most ``fast_block_row_fraction`` M rows on
    average that fit ``fast_block_max_entries``; otherwise the direct gains."""
    m = force_model
    assert np.mean(m.factor_ranks) > 0.25 * m.M
    assert not make_criterion("i").initialize(m)._fast_blocks
    assert block_state(make_criterion("a")).initialize(m)._fast_blocks
    crit = block_state(make_criterion("i"))
    crit.fast_block_max_entries = int(np.sum(m.factor_ranks)) * m.M - 1
    assert not crit.initialize(m)._fast_blocks
