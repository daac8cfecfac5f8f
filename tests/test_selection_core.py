"""Selection core: energy rows, whitened information, D-optimal greedy, record, seeds.

Every number is checked against an independent computation: brute-force kernel sums
over atoms for Φ, numpy slogdet of the whitened F̃ for the D value.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
from conftest import SMALL_SOAP

import mlipdoe
from mlipdoe.descriptors import make_descriptor
from mlipdoe.exceptions import InputError
from mlipdoe.model import DescriptorSource, energy_rows


def _model(frames, n_sparse=25, **kw):
    return mlipdoe.build_information_model(frames, soap=SMALL_SOAP, n_sparse=n_sparse, **kw)


def _whitened_d_value(model, subset):
    """log det F(S) − log det K_MM from Φ and K_MM directly (independent of the state)."""
    K = model.sparse.kernel_matrix(model.kernel) + model.jitter * np.eye(model.M)
    L = np.linalg.cholesky(K)
    phi = model.phi[list(subset)]
    lam = model.energy_variance[list(subset)]
    A = scipy.linalg.solve_triangular(L, phi.T, lower=True)  # L⁻¹ Φ_Sᵀ
    F_tilde = np.eye(model.M) + (A / lam) @ A.T
    sign, logdet = np.linalg.slogdet(F_tilde)
    assert sign > 0
    return logdet


def test_energy_rows_equal_brute_force_atom_sums(cuni_pool):
    model = _model(cuni_pool, n_sparse=15)
    desc = make_descriptor(model.soap).compute(cuni_pool[:5])
    zeta, delta = model.kernel.zeta, model.kernel.delta
    cols = model.sparse.slices()
    for s in range(5):
        expected = np.zeros(model.M)
        for z, block in desc.blocks.items():
            for x, f in zip(block.values, block.frame):
                if f == s:
                    for m, zvec in enumerate(model.sparse.vectors[z]):
                        expected[cols[z].start + m] += delta**2 * float(np.dot(x, zvec)) ** zeta
        np.testing.assert_allclose(model.phi[s], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pool_name", ["zr_pool_unrattled", "zr_pool", "cuni_pool"])
def test_greedy_gains_equal_slogdet_increments(pool_name, request):
    frames = request.getfixturevalue(pool_name)
    model = _model(frames)
    if pool_name == "zr_pool_unrattled":
        assert np.linalg.cond(model.sparse.kernel_matrix(model.kernel)) > 1e9  # badly conditioned
    result = mlipdoe.select(frames, n=12, model=model)
    values = [0.0] + [_whitened_d_value(model, result.selected[: k + 1]) for k in range(12)]
    increments = np.diff(values)
    np.testing.assert_allclose(result.gains, increments, rtol=1e-8)
    assert result.value == pytest.approx(values[-1], rel=1e-10)
    # the gain formula of the spec: log(1 + φᵀF⁻¹φ / (σ_E² n)) at the first pick (F = K_MM)
    s = result.selected[0]
    K = model.sparse.kernel_matrix(model.kernel) + model.jitter * np.eye(model.M)
    q = model.phi[s] @ np.linalg.lstsq(K, model.phi[s], rcond=None)[0]
    assert result.gains[0] == pytest.approx(np.log1p(q / model.energy_variance[s]), rel=1e-4)


@pytest.mark.parametrize("pool_name", ["zr_pool_unrattled", "zr_pool", "cuni_pool"])
def test_d_greedy_beats_median_of_random_designs(pool_name, request):
    frames = request.getfixturevalue(pool_name)
    model = _model(frames)
    n = 8
    d_value = mlipdoe.select(frames, n=n, model=model).value
    random_values = [_whitened_d_value(model, np.random.default_rng(k).choice(len(frames), n, replace=False))
                     for k in range(20)]
    assert d_value > np.median(random_values)
    assert d_value >= max(random_values) - 1e-9 or d_value > np.percentile(random_values, 90)


@pytest.mark.filterwarnings("ignore::mlipdoe.pool.DuplicateFramesWarning")
def test_greedy_is_greedy_and_breaks_ties_by_lowest_index(zr_pool):
    model = _model(zr_pool)
    result = mlipdoe.select(zr_pool, n=5, model=model)
    chosen = []
    for pick in result.selected:
        before = _whitened_d_value(model, chosen) if chosen else 0.0
        gains = [(_whitened_d_value(model, chosen + [c]) - before) if c not in chosen else -np.inf
                 for c in range(len(zr_pool))]
        assert pick == int(np.argmax(gains))
        chosen.append(pick)
    # exact duplicates of a frame tie; the lower index must win
    frames = [a.copy() for a in zr_pool[:10]] + [zr_pool[3].copy()]
    model2 = _model(frames, n_sparse=10)
    np.testing.assert_array_equal(model2.psi[3], model2.psi[10])
    picks = mlipdoe.select(frames, n=len(frames), model=model2).selected
    assert picks.index(3) < picks.index(10)


def test_threshold_stops_selection(zr_pool):
    model = _model(zr_pool)
    full = mlipdoe.select(zr_pool, n=20, model=model)
    cut = full.gains[6]
    stopped = mlipdoe.select(zr_pool, n=20, model=model, threshold=cut + 1e-9)
    assert stopped.selected == full.selected[:6]
    assert stopped.stopped_by == "threshold"


def test_fixed_frames_enter_first(zr_pool):
    model = _model(zr_pool)
    fixed = [0, 5]
    result = mlipdoe.select(zr_pool, n=4, model=model, fixed=fixed)
    assert not set(fixed) & set(result.selected)
    assert result.value == pytest.approx(_whitened_d_value(model, fixed + result.selected), rel=1e-9)
    assert result.record.fixed == fixed


def test_random_baseline_is_seeded_and_scored_as_d(zr_pool):
    model = _model(zr_pool)
    a = mlipdoe.select(zr_pool, n=6, criterion="random", model=model, seed=4)
    b = mlipdoe.select(zr_pool, n=6, criterion="random", model=model, seed=4)
    c = mlipdoe.select(zr_pool, n=6, criterion="random", model=model, seed=5)
    assert a.selected == b.selected and a.selected != c.selected
    assert a.value == pytest.approx(_whitened_d_value(model, a.selected), rel=1e-9)


def test_streamed_rows_do_not_depend_on_chunking_or_cache(zr_pool):
    model = _model(zr_pool)
    descriptor = make_descriptor(model.soap)
    for chunk, limit in ((7, 0), (100, 2e9)):
        source = DescriptorSource(descriptor, zr_pool, chunk_size=chunk, cache_limit_bytes=limit)
        phi = energy_rows(source, model.sparse, model.kernel, len(zr_pool))
        np.testing.assert_allclose(phi, model.phi, rtol=1e-12, atol=1e-12)


def test_sparse_points_deterministic_from_seed_and_deduplicated(zr_pool, zr_pool_unrattled):
    a = _model(zr_pool, seed=3).sparse.location_list()
    b = _model(zr_pool, seed=3).sparse.location_list()
    c = _model(zr_pool, seed=4).sparse.location_list()
    assert a == b and a != c
    # a perfect crystal has one distinct environment per site type: duplicates are dropped
    from mlipdoe.generate import generate_strained

    perfect = generate_strained("Cu", structure="fcc", n_frames=3, max_strain=1e-9, supercell=(2, 2, 2), seed=0)
    model = _model(perfect[:1], n_sparse=10)
    assert model.M == 1 and len(model.sparse.dropped) == 7
    fps = _model(zr_pool, sparse_method="fps", seed=0)
    X = fps.sparse.vectors[40]
    assert fps.M == 25 and np.max(np.triu(X @ X.T, 1)) < 1 - 1e-10


def test_uncovered_species_is_a_clear_error(zr_pool, cuni_pool):
    model = _model(zr_pool)
    with pytest.raises(InputError, match=r"species \[28, 29\] not covered by the sparse points"):
        model.rows_for(cuni_pool[:2])
    with pytest.raises(InputError, match="not listed in the SOAP species"):
        mlipdoe.build_information_model(cuni_pool, soap=SMALL_SOAP.with_species([29]), n_sparse=5)


def test_bad_n_is_rejected(zr_pool):
    model = _model(zr_pool)
    for n in (0, -3):
        with pytest.raises(InputError, match="positive number of frames"):
            mlipdoe.select(zr_pool, n=n, model=model)
    with pytest.raises(InputError, match="exceeds the 60 frames available"):
        mlipdoe.select(zr_pool, n=61, model=model)


def test_record_roundtrip_and_verify(tmp_path, zr_pool):
    from mlipdoe.generate import write_frames

    path = tmp_path / "pool.xyz"
    write_frames(zr_pool, path)
    pool = mlipdoe.read_pool([path])
    result = mlipdoe.select(pool, n=5, soap=SMALL_SOAP, n_sparse=20)
    mlipdoe.write_record(result.record, tmp_path / "design.json")
    data = json.loads((tmp_path / "design.json").read_text())
    for key in ("format", "pool", "descriptor", "kernel", "noise", "observations", "sparse_points", "criterion",
                "optimizer", "seed", "budget", "fixed", "selected", "gains", "value", "log_det_K_MM",
                "timings_s", "versions"):
        assert key in data
    assert data["format"] == "mlipdoe.design/3" and data["pool"][0]["n_frames"] == 60
    assert len(data["sparse_points"]) == result.model.M
    again = mlipdoe.read_record(tmp_path / "design.json")
    assert again.to_dict() == data
    check = mlipdoe.verify_record(again, pool)
    assert check["ok"] and check["recomputed"] == pytest.approx(result.value, rel=1e-9)
    # the record alone reproduces the model: same sparse points, same log det K_MM
    rebuilt = mlipdoe.model_from_record(again, pool)
    assert rebuilt.log_det_K_MM == pytest.approx(result.record.log_det_K_MM, rel=1e-10)
    assert sorted(map(tuple, rebuilt.sparse.location_list())) == sorted(map(tuple, data["sparse_points"]))
