"""Tests of mlipdoe.assess against independent from-scratch computations.

The adequacy threshold is fixed here in advance: 5 meV/atom (5 σ_E of the default energy
noise, the usual few-meV/atom accuracy target of a GAP energy fit), with 95 % of target
frames required below it. Pre-computed margins on these pools (SOAP n_max 4, l_max 3,
25 CUR sparse points): the D-optimal 10-frame set from ±5 % strains has target p95 std
≈ 1.3 meV/atom (max ≈ 1.5), the random 10-frame set from |strain| < 1 % has median ≈ 6
and p95 ≈ 20 meV/atom on the 3–5 % target — a factor ≥ 3 either side of the threshold.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import SMALL_SOAP

from mlipdoe import assess as A
from mlipdoe import schemas
from mlipdoe.api import select
from mlipdoe.exceptions import InputError
from mlipdoe.generate import generate_strained
from mlipdoe.hypers import ModelConfig

MAX_STD = 5.0  # meV/atom, fixed in advance (see the module docstring)


@pytest.fixture(scope="module")
def pools():
    return {
        "wide": generate_strained("Zr", n_frames=60, max_strain=0.05, rattle=0.02, seed=11),
        "small": generate_strained("Zr", n_frames=30, max_strain=0.01, rattle=0.02, seed=12),
        "target": generate_strained("Zr", n_frames=20, min_strain=0.03, max_strain=0.05, rattle=0.02, seed=13),
    }


@pytest.fixture(scope="module")
def design(pools):
    return select(pools["wide"], n=10, criterion="d", soap=SMALL_SOAP, n_sparse=25, seed=0)


@pytest.fixture(scope="module")
def d_setup(pools, design):
    return A.prepare(pool=pools["wide"], record=design.record)


@pytest.fixture(scope="module")
def small_train(pools):
    pick = np.random.default_rng(0).choice(len(pools["small"]), 10, replace=False)
    return [pools["small"][i] for i in pick]


@pytest.fixture(scope="module")
def small_setup(pools, small_train):
    return A.prepare(small_train, pool=pools["wide"], config=ModelConfig(soap=SMALL_SOAP, n_sparse=25))


# -- independent oracles -----------------------------------------------------


def whitened_info(model, members):
    """F̃ = I + Σ ψ_s ψ_sᵀ / (σ_E² n_s), built here from the rows (energy-only model)."""
    W = model.psi[list(members)] / np.sqrt(model.energy_variance[list(members)])[:, None]
    return np.eye(model.M) + W.T @ W


def d_value(model, members):
    sign, logdet = np.linalg.slogdet(whitened_info(model, members))
    assert sign > 0
    return logdet


def std_meV(model, members, psi, n):
    C = np.linalg.inv(whitened_info(model, members))
    return np.sqrt(np.einsum("ij,jk,ik->i", psi, C, psi)) / np.asarray(n, float) * 1000.0


# -- adequacy ------------------------------------------------------------------


def test_d_optimal_wide_set_is_adequate_and_random_small_set_is_not(pools, d_setup, small_setup):
    good = A.assess(d_setup, targets={"strain3-5": pools["target"]}, max_std=MAX_STD)
    bad = A.assess(small_setup, targets={"strain3-5": pools["target"]}, max_std=MAX_STD)
    assert good["adequacy"]["verdict"] == "ADEQUATE"
    assert A.exit_code(good) == 0
    assert bad["adequacy"]["verdict"] == "NOT ADEQUATE"
    assert A.exit_code(bad) == 1
    check = bad["adequacy"]["targets"][0]
    assert not check["passed"]
    assert "fraction of frames with per-atom energy std <= 5 meV/atom" in check["failed_statistic"]
    assert "strain3-5" in bad["adequacy"]["reason"]
    # the statistics are the from-scratch predictive std of the target frames
    model = small_setup.model
    target_psi = model.rows_for(pools["target"])
    ref = std_meV(model, small_setup.members, target_psi, [len(a) for a in pools["target"]])
    np.testing.assert_allclose(check["std_meV"], ref, rtol=1e-8)
    assert check["p95"] == pytest.approx(np.percentile(ref, 95), rel=1e-8)
    assert check["fraction_below"] == pytest.approx(np.mean(ref <= MAX_STD))


def test_no_target_gives_no_verdict(d_setup):
    rep = A.assess(d_setup)
    assert rep["adequacy"]["verdict"] == "NO TARGET"
    assert A.exit_code(rep) == 0


def test_bad_options_raise(d_setup, pools):
    with pytest.raises(InputError, match="max-std must be > 0"):
        A.assess(d_setup, max_std=0.0)
    with pytest.raises(InputError, match="--criterion must be one of"):
        A.assess(d_setup, criterion="fps")
    with pytest.raises(InputError, match="needs its pool"):
        A.prepare(record=d_setup.record)
    with pytest.raises(InputError, match="both --labels and --predictions"):
        A.assess(d_setup, labels=pools["target"][:3])


# -- identifiability -------------------------------------------------------------


def test_identifiability_matches_eigendecomposition(d_setup):
    model, members = d_setup.model, d_setup.members
    rep = A.identifiability(model, members, threshold=1.0)
    F = whitened_info(model, members)
    ev = np.linalg.eigvalsh(F)
    np.testing.assert_allclose(sorted(rep["eigenvalues"]), ev, rtol=1e-8, atol=1e-8)
    assert rep["n_constrained"] == int(np.sum(ev > 2.0))
    # 10 energy rows constrain at most 10 directions
    assert rep["n_constrained"] <= 10
    assert rep["effective_parameters"] == pytest.approx(model.M - np.trace(np.linalg.inv(F)), rel=1e-8)
    assert rep["effective_parameters"] <= rep["n_observations"] == 10
    assert rep["condition_number"] == pytest.approx(ev[-1] / ev[0], rel=1e-6)


def test_identifiability_per_species_blocks(cuni_pool):
    setup = A.prepare(cuni_pool[:12], config=ModelConfig(soap=SMALL_SOAP, n_sparse=10))  # model on the training set itself
    rep = A.identifiability(setup.model, setup.members, threshold=0.5)
    F = whitened_info(setup.model, setup.members)
    slices = setup.model.sparse.slices()
    assert [s["species"] for s in rep["per_species"]] == sorted(slices)
    for s in rep["per_species"]:
        sl = slices[s["species"]]
        ev = np.linalg.eigvalsh(F[sl, sl])
        np.testing.assert_allclose(sorted(s["eigenvalues"]), ev, rtol=1e-8, atol=1e-8)
        assert s["n_constrained"] == int(np.sum(ev > 1.5))
    assert sum(s["M"] for s in rep["per_species"]) == setup.model.M


# -- informativeness -------------------------------------------------------------


def test_removal_losses_and_swap_gains_equal_from_scratch_differences(d_setup):
    model, members = d_setup.model, d_setup.members
    info = A.informativeness(d_setup)
    full = d_value(model, members)
    assert info["value"] == pytest.approx(full, rel=1e-9)
    candidates = np.flatnonzero(d_setup.candidates)
    assert not set(candidates) & set(members)
    for row in info["members"]:
        s = row["index"]
        rest = [m for m in members if m != s]
        assert row["loss"] == pytest.approx(full - d_value(model, rest), rel=1e-7, abs=1e-9)
        j = row["best_swap"]["index"]
        assert j in candidates
        assert row["best_swap"]["gain"] == pytest.approx(d_value(model, rest + [j]) - full, rel=1e-7, abs=1e-8)
        # it is the best one-for-one swap for this member (brute force over the pool)
        best = max(d_value(model, rest + [int(c)]) for c in candidates) - full
        assert row["best_swap"]["gain"] == pytest.approx(best, rel=1e-7, abs=1e-8)


def test_duplicated_training_frame_is_redundant(pools, design):
    train = [pools["wide"][i] for i in design.selected]
    train.append(train[3].copy())
    setup = A.prepare(train, pool=pools["wide"], config=ModelConfig(soap=SMALL_SOAP, n_sparse=25))
    info = A.informativeness(setup)
    flags = [m["redundant"] for m in info["members"]]
    assert flags[10] and flags[3]
    assert sum(flags) == 2, flags
    dup = info["members"][10]
    assert dup["loo_std_meV"] <= dup["noise_std_meV"]
    # the pool frames equal to training frames are not swap/addition candidates
    assert not setup.candidates[list(design.selected)].any()
    assert setup.candidates.sum() == len(pools["wide"]) - 10


def test_best_additions_are_the_largest_from_scratch_gains(d_setup):
    model, members = d_setup.model, d_setup.members
    adds = A.best_additions(d_setup, k=5)
    full = d_value(model, members)
    cand = np.flatnonzero(d_setup.candidates)
    gains = {int(c): d_value(model, members + [int(c)]) - full for c in cand}
    top = sorted(gains, key=gains.get, reverse=True)[:5]
    assert [f["index"] for f in adds["frames"]] == top
    for f in adds["frames"]:
        assert f["gain"] == pytest.approx(gains[f["index"]], rel=1e-7)
        assert f["gain_per_cost"] == pytest.approx(f["gain"] / f["cost"])


def test_design_efficiency(d_setup, small_setup):
    eff = A.design_efficiency(d_setup)
    ref = d_value(d_setup.model, eff["reference_selected"])
    assert eff["value_reference"] == pytest.approx(ref, rel=1e-8)
    expected = np.exp((d_value(d_setup.model, d_setup.members) - ref) / d_setup.model.M)
    assert eff["efficiency"] == pytest.approx(expected, rel=1e-8)
    assert eff["efficiency"] > 0.9  # greedy D-optimal vs greedy(+exchange)
    low = A.design_efficiency(small_setup)
    assert low["efficiency"] < 0.5
    assert low["optimizer"] in ("greedy", "greedy+exchange")


# -- bias check --------------------------------------------------------------------


def test_bias_check_warns_for_random_split_not_for_other_strain_range(pools):
    run = generate_strained("Zr", n_frames=60, max_strain=0.01, rattle=0.02, seed=21)
    order = np.random.default_rng(5).permutation(60)
    train, test_same = [run[i] for i in order[:48]], [run[i] for i in order[48:]]
    setup = A.prepare(train, pool=pools["wide"], config=ModelConfig(soap=SMALL_SOAP, n_sparse=25))
    same = A.assess(setup, test=test_same)["bias_check"]
    other = A.assess(setup, test=pools["target"])["bias_check"]
    assert same["warning"] is not None and "inside the training distribution" in same["warning"]
    assert same["p_value"] >= same["alpha"] == 0.05 or same["median_ratio"] < same["min_ratio"] == 2.0
    assert other["warning"] is None
    assert other["p_value"] < 1e-6
    assert other["median_ratio"] > 10
    assert other["fraction_beyond"] > 0.5
    # the p-value is the one-sided rank test on the two reported distance samples
    from scipy.stats import mannwhitneyu

    p = mannwhitneyu(other["test_to_train"]["values"], other["train_to_train"]["values"], alternative="greater").pvalue
    assert other["p_value"] == pytest.approx(p)
    # distances from the Nyström kernel φ K_MM⁻¹ φ' / (n n'), computed here without whitening
    model = setup.model
    K_MM = model.L @ model.L.T
    phi_train = model.phi[setup.members]
    phi_test = model.rows_for(pools["target"]) @ model.L.T

    def khat(a, b):
        Kab = a @ np.linalg.solve(K_MM, b.T)
        Kaa = np.einsum("ij,ji->i", a, np.linalg.solve(K_MM, a.T))
        Kbb = np.einsum("ij,ji->i", b, np.linalg.solve(K_MM, b.T))
        return Kab / np.sqrt(np.outer(Kaa, Kbb))

    d_test = np.sqrt(np.clip(2 - 2 * khat(phi_test, phi_train), 0, None)).min(axis=1)
    np.testing.assert_allclose(other["test_to_train"]["values"], d_test, rtol=1e-5, atol=1e-7)


# -- grade -------------------------------------------------------------------------


def test_grade_training_frames_le_one_and_far_frames_kept(pools, design):
    model, train = design.model, design.selected
    train_frames = [pools["wide"][i] for i in train]
    far = generate_strained("Zr", n_frames=3, min_strain=0.075, max_strain=0.08, seed=5)
    bcc = generate_strained("Zr", structure="bcc", a=3.57, n_frames=2, max_strain=0.01, seed=5)
    frames = train_frames + far + bcc
    res = A.grade(model, train, frames, train_frames=train_frames)
    # from scratch: v = ψᵀ F̃⁻¹ ψ / n², relative to the largest training value
    psi = model.rows_for(frames)
    n = np.array([len(a) for a in frames])
    v = (std_meV(model, train, psi, n) / 1000.0) ** 2
    np.testing.assert_allclose(res.frame_grade, v / v[:10].max(), rtol=1e-6)
    assert np.all(res.frame_grade[:10] <= 1 + 1e-9)
    assert res.frame_grade[:10].max() == pytest.approx(1.0)
    assert np.all(res.frame_grade[10:] > 1)
    for g in res.atom_grades[:10]:
        assert np.all(g <= 1 + 1e-9)
    assert max(g.max() for g in res.atom_grades[:10]) == pytest.approx(1.0)
    kept = A.graded_frames(frames, res, keep_above=1.0)
    assert [a.info["mlipdoe_index"] for a in kept] == list(range(10, 15))
    for a in kept:
        assert a.info["mlipdoe_grade"] > 1
        assert a.arrays["mlipdoe_grade"].shape == (len(a),)
    # the local rows add up to the frame rows
    rows = model.local_rows(far)
    np.testing.assert_allclose(np.array([r.sum(axis=0) for r in rows]), model.rows_for(far), rtol=1e-8, atol=1e-10)


# -- calibration -------------------------------------------------------------------


def test_calibration_spearman(pools, d_setup):
    frames = pools["target"][:8]
    model = d_setup.model
    std = std_meV(model, d_setup.members, model.rows_for(frames), [len(a) for a in frames])
    labels, preds = [], []
    for k, a in enumerate(frames):
        lab, pred = a.copy(), a.copy()
        lab.calc = SinglePointCalculator(lab, energy=-8.0 * len(a))
        # error per atom grows with the predicted std (monotone), sign alternating
        pred.info["energy"] = (-8.0 + (-1) ** k * 1e-3 * std[k] ** 2) * len(a)
        labels.append(lab)
        preds.append(pred)
    cal = A.calibration(model, A.posterior_covariance(model, d_setup.members), labels, preds)
    assert cal["spearman_rho"] == pytest.approx(1.0)
    np.testing.assert_allclose(cal["abs_error_meV"], std**2, rtol=1e-6)
    with pytest.raises(InputError, match="has 8 frames but --predictions has 7"):
        A.calibration(model, np.eye(model.M), labels, preds[:7])


# -- report output -----------------------------------------------------------------


def test_figures_and_report_json_validate(tmp_path, pools, small_setup):
    import matplotlib.image as mpimg

    targets = {"strain3-5": pools["target"]}
    rep = A.assess(small_setup, targets=targets, test=pools["small"][:10], max_std=MAX_STD)
    rep["figures"] = A.write_figures(small_setup, rep, tmp_path, targets=targets)
    path = A.write_report(rep, tmp_path)
    assert set(rep["figures"]) == {"std_histogram", "gain_curve", "pca_map"}
    for name in rep["figures"].values():
        f = tmp_path / name
        assert f.stat().st_size > 1000
        img = mpimg.imread(f)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert np.ptp(img[..., :3]) > 0.5  # not a blank canvas
        assert len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 20  # drawn data: many colours
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    data = json.loads(path.read_text())
    schemas.check(data, "report", "report.json")
    # the validation can fail
    broken = dict(data, adequacy=dict(data["adequacy"], verdict="FINE"))
    with pytest.raises(InputError, match=r"^report.json: field 'adequacy.verdict' must be one of"):
        schemas.check(broken, "report", "report.json")


def test_force_rows_losses_swaps_and_duplicate(pools):
    """With force observations each frame adds a block; losses/swaps still equal slogdet differences."""
    pool = generate_strained("Zr", n_frames=12, max_strain=0.05, rattle=0.05, seed=31)
    train = generate_strained("Zr", n_frames=4, max_strain=0.01, rattle=0.05, seed=32)
    train.append(train[1].copy())
    setup = A.prepare(train, pool=pool, config=ModelConfig(soap=SMALL_SOAP, n_sparse=12, observations=("energy", "forces")))
    model = setup.model
    assert model.factors is not None and len(model.factors) == 17
    rep = A.assess(setup, targets={"t": pools["target"][:3]})
    ident = rep["identifiability"]
    assert ident["n_observations"] == 5 * (1 + 3 * 16)
    assert rep["adequacy"]["targets"][0]["force_std"]["n"] == 3

    def dv(S):
        return np.linalg.slogdet(model.information(S))[1]

    full = dv(setup.members)
    info = rep["informativeness"]
    for row in info["members"]:
        rest = [m for m in setup.members if m != row["index"]]
        assert row["loss"] == pytest.approx(full - dv(rest), rel=1e-7)
        j = row["best_swap"]["index"]
        assert row["best_swap"]["gain"] == pytest.approx(dv(rest + [j]) - full, rel=1e-6, abs=1e-8)
    assert info["members"][4]["redundant"] and info["members"][1]["redundant"]


def test_nearest_distance_chunks_match_brute_force(d_setup):
    psi = d_setup.model.psi[:23]
    D = A.kernel_distance(psi, psi)
    np.fill_diagonal(D, np.inf)
    np.testing.assert_allclose(A.nearest_distance(psi, psi, exclude_self=True, chunk_size=4), D.min(axis=1),
                               atol=1e-7)
    np.testing.assert_allclose(A.nearest_distance(psi[:5], psi[5:], chunk_size=2),
                               A.kernel_distance(psi[:5], psi[5:]).min(axis=1), atol=1e-7)


def test_i_optimal_wide_set_is_adequate(pools, design):
    """The I-optimal set (target = the wide pool) of the same size passes the same fixed threshold."""
    result = select(pools["wide"], n=10, criterion="i", model=design.model, seed=0)
    setup = A.prepare(pool=pools["wide"], record=result.record)
    rep = A.assess(setup, targets={"strain3-5": pools["target"]}, max_std=MAX_STD, criterion="i")
    assert rep["adequacy"]["verdict"] == "ADEQUATE", rep["adequacy"]["reason"]
    assert rep["informativeness"]["criterion"] == "i"
    # the i losses are from-scratch differences of −mean_t v_S(t) over the pool (the i target here)
    model = setup.model
    n_pool = len(pools["wide"])

    def i_value(S):
        C = np.linalg.inv(whitened_info(model, S))
        psi = model.psi[:n_pool]
        return -np.mean(np.einsum("ij,jk,ik->i", psi, C, psi) / model.n_atoms[:n_pool] ** 2)

    full = i_value(setup.members)
    assert rep["informativeness"]["value"] == pytest.approx(full, rel=1e-6)
    for row in rep["informativeness"]["members"][:3]:
        rest = [m for m in setup.members if m != row["index"]]
        assert row["loss"] == pytest.approx(full - i_value(rest), rel=1e-5)


def test_train_frames_with_record_use_the_record_model(pools, design, small_train):
    setup = A.prepare(small_train, pool=pools["wide"], record=design.record)
    assert setup.source == "frames+record"
    assert setup.model.M == design.model.M
    np.testing.assert_allclose(setup.model.psi[: len(pools["wide"])], design.model.psi, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(setup.model.psi[setup.members], design.model.rows_for(small_train), rtol=1e-10,
                               atol=1e-12)
    assert setup.candidates[: len(pools["wide"])].all()  # no training frame is a pool frame
