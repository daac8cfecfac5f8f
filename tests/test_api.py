"""Public API. Toolbox section: augmentation, targets, scoring, CLI options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL_SOAP, run_cli

import mlipdoe
from mlipdoe.api import score, select
from mlipdoe.exceptions import ConfigurationError, InputError

# ----------------------------------------------------------------------------------------
# toolbox: select with criteria/optimizers/augmentation, score, CLI
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toolbox_frames():
    from mlipdoe.generate import zr_example

    frames = zr_example(40, seed=3)
    for k, a in enumerate(frames):
        a.info["config_type"] = "bulk" if k % 4 else "special"
    return frames


@pytest.fixture(scope="module")
def toolbox_model(toolbox_frames):
    return mlipdoe.build_information_model(toolbox_frames, soap=SMALL_SOAP, n_sparse=10)


def _independent_d(model, fixed_rows, indices):
    F = np.eye(model.M)
    for W in fixed_rows:
        F += W.T @ W
    for i in indices:
        w = model.psi[i] / np.sqrt(model.noise.energy ** 2 * model.n_atoms[i])
        F += np.outer(w, w)
    return np.linalg.slogdet(F)[1]


def test_toolbox_augmentation_keeps_fixed_and_existing(toolbox_frames, toolbox_model, tmp_path):
    from mlipdoe.generate import write_frames, zr_example

    existing = zr_example(3, seed=21)
    path = tmp_path / "train.xyz"
    write_frames(existing, path)
    r = select(toolbox_frames, n=6, criterion="d", model=toolbox_model, existing=str(path),
               include=[5, "special"], exclude=[6, 7], fixed=[9])
    special = [k for k in range(40) if k % 4 == 0]
    fixed = r.record.fixed
    assert sorted(fixed) == sorted(set([9, 5] + special)) and len(fixed) == len(set(fixed))
    assert not set(r.selected) & set(fixed) and not set(r.selected) & {6, 7}
    assert len(r.selected) == 6 == len(set(r.selected))
    ex = r.record.extras["existing"]
    assert ex["path"] == str(path) and ex["n_frames"] == 3 and len(ex["sha256"]) == 64
    # d value = log det of I + existing + fixed + selected, from independent rows
    psi_e = toolbox_model.rows_for(existing)
    rows = [psi_e[k : k + 1] / np.sqrt(toolbox_model.noise.energy ** 2 * len(existing[k])) for k in range(3)]
    assert r.value == pytest.approx(_independent_d(toolbox_model, rows, fixed + r.selected), rel=1e-9)
    # exchange never drops or duplicates a fixed frame either
    r2 = select(toolbox_frames, n=4, criterion="i", optimizer="exchange", restarts=1, model=toolbox_model,
                existing=existing, include=[5])
    assert r2.record.fixed == [5] and 5 not in r2.selected and len(set(r2.selected)) == 4


def test_toolbox_bad_combinations(toolbox_frames, toolbox_model):
    from mlipdoe.generate import generate_strained

    with pytest.raises(InputError, match="frame 8 is both included"):
        select(toolbox_frames, n=3, model=toolbox_model, include=[8], exclude=["special"])
    with pytest.raises(InputError, match="config_type 'nope'"):
        select(toolbox_frames, n=3, model=toolbox_model, include=["nope"])
    cu = generate_strained("Cu", structure="fcc", n_frames=2, seed=0)
    with pytest.raises(InputError, match=r"species \[29\]"):
        select(toolbox_frames, n=3, model=toolbox_model, criterion="i", target=cu)
    with pytest.raises(InputError, match=r"species \[29\]"):
        select(toolbox_frames, n=3, model=toolbox_model, existing=cu)
    with pytest.raises(ConfigurationError, match="unknown optimizer"):
        select(toolbox_frames, n=3, model=toolbox_model, optimizer="anneal")


def test_toolbox_record_stores_options(toolbox_frames, toolbox_model):
    r = select(toolbox_frames, n=5, criterion="maximin", optimizer="exchange", restarts=2, model=toolbox_model,
               exclude=[1])
    d = r.record.to_dict()
    assert d["criterion"] == "maximin" and d["optimizer"] == "exchange"
    assert d["budget"]["kind"] == "count" and d["budget"]["value"] == 5
    assert d["exclude"] == [1] and d["optimizer_details"]["exchange"]["restarts"] == 2
    lazy = select(toolbox_frames, n=5, criterion="d", model=toolbox_model)
    det = lazy.record.extras["optimizer_details"]
    assert det["lazy"] and 0 < det["saved_fraction"] < 1


def test_toolbox_i_optimal_target_beats_d_and_random():
    """Target strains (4-6 %) outside the pool's (≤ 2 %): I-optimal on the target gives the
    lowest mean target variance (computed here from scratch)."""
    from mlipdoe.generate import generate_strained

    pool = generate_strained("Zr", n_frames=80, max_strain=0.02, rattle=0.02, seed=31, a=3.232, c=5.147)
    target = generate_strained("Zr", n_frames=20, min_strain=0.04, max_strain=0.06, rattle=0.02, seed=32,
                               a=3.232, c=5.147)
    model = mlipdoe.build_information_model(pool, soap=SMALL_SOAP, n_sparse=15)
    psi_t = model.rows_for(target)
    n_t = np.array([len(a) for a in target], dtype=float)

    def mean_target_variance(indices):
        C = np.linalg.inv(model.information(indices))
        return np.mean(np.einsum("ij,jk,ik->i", psi_t, C, psi_t) / n_t**2)

    n = 8
    v_i = mean_target_variance(select(pool, n=n, criterion="i", target=target, model=model).selected)
    v_d = mean_target_variance(select(pool, n=n, criterion="d", model=model).selected)
    v_r = [mean_target_variance(select(pool, n=n, criterion="random", model=model, seed=s).selected)
           for s in range(5)]
    assert v_i < v_d
    assert v_i < min(v_r)


def test_toolbox_score_matches_independent_values(toolbox_frames, toolbox_model, tmp_path):
    design = [2, 11, 17, 30]
    s = score(toolbox_frames, design=design, model=toolbox_model)
    assert s["n_frames"] == 4 and s["n_atoms"] == 64
    F = toolbox_model.information(design)
    C = np.linalg.inv(F)
    psi, n = toolbox_model.psi, toolbox_model.n_atoms.astype(float)
    v = np.einsum("ij,jk,ik->i", psi, C, psi) / n**2
    L = toolbox_model.L
    assert s["criteria"]["d"] == pytest.approx(np.linalg.slogdet(F)[1], rel=1e-9)
    assert s["criteria"]["i"] == pytest.approx(-v.mean(), rel=1e-6)
    assert s["criteria"]["g"] == pytest.approx(-v.max(), rel=1e-6)
    assert s["criteria"]["a"] == pytest.approx(-np.trace(L @ C @ L.T) / toolbox_model.M, rel=1e-6)
    assert s["criteria"]["e"] == pytest.approx(np.linalg.eigvalsh(F)[0], rel=1e-9)
    P = psi[design] / np.linalg.norm(psi[design], axis=1)[:, None]
    G = P @ P.T
    assert s["criteria"]["maximin"] == pytest.approx(
        np.sqrt(2 - 2 * G[np.triu_indices(4, 1)]).min(), rel=1e-6)
    assert set(s["criteria"]) == {"d", "a", "i", "g", "e", "maximin", "fps", "cur"}
    # a record scores to its own value
    r = select(toolbox_frames, n=4, criterion="g", model=toolbox_model, include=[1])
    s2 = score(toolbox_frames, design=r.record, model=toolbox_model)
    assert s2["frames"] == [1] + r.selected
    assert s2["criteria"]["g"] == pytest.approx(r.value, rel=1e-6)
    with pytest.raises(InputError, match="twice"):
        score(toolbox_frames, design=[1, 1], model=toolbox_model)


CLI_SMALL = ["--n-sparse", "8", "--n-max", "4", "--l-max", "3", "-q"]


def test_toolbox_cli_select_and_score(tmp_path):
    from mlipdoe.generate import generate_strained, write_frames, zr_example

    write_frames(zr_example(30, seed=5), tmp_path / "pool.xyz")
    write_frames(zr_example(3, seed=6), tmp_path / "ex.xyz")
    write_frames(generate_strained("Zr", n_frames=4, min_strain=0.04, max_strain=0.06, seed=7), tmp_path / "t.xyz")
    res = run_cli("select", "pool.xyz", "--budget-atoms", "64", "--criterion", "i", "--optimizer", "exchange",
                  "--restarts", "1", "--target", "t.xyz", "--existing", "ex.xyz", "--include", "0,1",
                  "--exclude", "2", "--observe", "energy", *CLI_SMALL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "design.json").read_text())
    assert rec["criterion"] == "i" and rec["optimizer"] == "exchange" and rec["fixed"] == [0, 1]
    assert rec["budget"]["kind"] == "atoms" and rec["budget"]["value"] == 64 and rec["budget"]["spent"] <= 64
    assert rec["existing"]["n_frames"] == 3 and rec["target"]["n_frames"] == 4 and 2 not in rec["selected"]
    res = run_cli("score", "--record", "design.json", "--target", "t.xyz", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for name in ("maximin", "fps", "cur", "target variance"):
        assert name in res.stdout


@pytest.mark.parametrize("args, message", [
    (["-n", "3", "--include", "4", "--exclude", "4"], "both included"),
    (["--budget-atoms", "5"], "smaller than the cheapest"),
    (["-n", "3", "--criterion", "i", "--target", "cu.xyz"], "species [29]"),
])
def test_toolbox_cli_bad_combinations_exit_2(tmp_path, args, message):
    from mlipdoe.generate import generate_strained, write_frames, zr_example

    write_frames(zr_example(12, seed=5), tmp_path / "pool.xyz")
    write_frames(generate_strained("Cu", structure="fcc", n_frames=2, seed=1), tmp_path / "cu.xyz")
    res = run_cli("select", "pool.xyz", *args, *CLI_SMALL, cwd=tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr


def test_toolbox_verify_any_criterion_with_existing(tmp_path):
    from mlipdoe.generate import write_frames, zr_example

    write_frames(zr_example(25, seed=8), tmp_path / "pool.xyz")
    write_frames(zr_example(3, seed=9), tmp_path / "ex.xyz")
    pool = mlipdoe.read_pool([tmp_path / "pool.xyz"])
    for criterion in ("i", "maximin"):
        r = select(pool, n=4, criterion=criterion, soap=SMALL_SOAP, n_sparse=8, existing=str(tmp_path / "ex.xyz"))
        assert mlipdoe.verify_record(r.record, pool)["ok"]
        r.record.value *= 1.01
        assert not mlipdoe.verify_record(r.record, pool)["ok"]
    (tmp_path / "ex.xyz").unlink()
    with pytest.raises(InputError, match="existing training set"):
        mlipdoe.verify_record(r.record, pool)


def test_i_with_force_target_observable_equals_mean_force_variance(zr_pool):
    """--target-observable forces: the i value is −mean force-component variance of the target,
    checked against rows recomputed from scratch (ψ_F of every target frame)."""
    from conftest import SMALL_SOAP

    import mlipdoe
    from mlipdoe.exceptions import ConfigurationError

    pool, target = zr_pool[:30], zr_pool[40:46]
    result = mlipdoe.select(pool, n=4, criterion="i", target=target, target_observable="forces", soap=SMALL_SOAP,
                            n_sparse=15)
    model = result.model
    C = np.linalg.inv(model.information(result.selected))
    variances = []
    for rows in model.observation_rows(target, observations=("energy", "forces")):
        psi_f = rows.psi[rows.kind == "force"]
        variances.append(np.einsum("ij,jk,ik->", psi_f, C, psi_f) / len(psi_f))
    assert result.value == pytest.approx(-np.mean(variances), rel=1e-8)
    assert result.record.extras["target_observable"] == "forces"
    with pytest.raises(ConfigurationError, match="needs --observe energy,forces"):
        mlipdoe.select(pool, n=2, criterion="i", target_observable="forces", model=model)
    with pytest.raises(ConfigurationError, match="i criterion only"):
        mlipdoe.select(pool, n=2, criterion="g", target=target, target_observable="forces", model=model)


def test_i_with_energy_and_force_target_is_their_noise_weighted_sum(zr_pool):
    """--target-observable energy,forces: value = −mean_t (v_E(t)/σ_E² + v_F(t)/σ_F²), the per-atom
    energy and mean force-component variances recomputed from the target frames' rows."""
    from conftest import SMALL_SOAP

    import mlipdoe
    from mlipdoe.hypers import Noise

    pool, target = zr_pool[:30], zr_pool[40:46]
    noise = Noise(energy=0.002, force=0.1)
    kw = dict(n=4, criterion="i", target=target, soap=SMALL_SOAP, n_sparse=15, noise=noise)
    result = mlipdoe.select(pool, target_observable="energy,forces", **kw)
    model = result.model
    C = np.linalg.inv(model.information(result.selected))
    total = []
    for rows, atoms in zip(model.observation_rows(target, observations=("energy", "forces")), target):
        psi_e, psi_f = rows.psi[rows.kind == "energy"], rows.psi[rows.kind == "force"]
        v_e = float((psi_e @ C @ psi_e.T).item()) / len(atoms) ** 2
        v_f = np.einsum("ij,jk,ik->", psi_f, C, psi_f) / len(psi_f)
        total.append(v_e / noise.energy**2 + v_f / noise.force**2)
    assert result.value == pytest.approx(-np.mean(total), rel=1e-8)
    assert result.record.extras["target_observable"] == "energy,forces"
