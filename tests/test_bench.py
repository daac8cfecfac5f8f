"""Learning-curve benchmark: labels hidden from selection, reduced end-to-end run."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from ase.calculators.calculator import Calculator
from conftest import EAM_FILE, eam_labelled

from mlipdoe.bench import (
    BenchmarkConfig,
    FrozenDesign,
    LabelAccessError,
    LabelVault,
    run_benchmark,
    select_design,
    strip_labels,
    update_markdown_section,
    write_outputs,
)
from mlipdoe.descriptors import SOAP
from mlipdoe.fit import evaluate, fit_gpr, read_labels
from mlipdoe.generate import zr_example
from mlipdoe.hypers import Noise
from mlipdoe.model import build_model
from mlipdoe.model.kernels import Kernel

SMALL = SOAP(n_max=4, l_max=3)
needs_eam = pytest.mark.skipif(not EAM_FILE.exists(), reason="../shared/data/eam not present")


class Booby(Calculator):
    """A calculator that fails on any use: a selector touching labels would raise."""

    implemented_properties = ["energy", "forces"]

    @property
    def results(self):
        raise AssertionError("labels were touched")

    @results.setter
    def results(self, value):
        pass

    def calculate(self, *args, **kwargs):
        raise AssertionError("labels were touched")


def test_strip_labels_removes_everything_but_geometry():
    a = zr_example(1, seed=0)[0]
    a.info["energy"] = -1.0
    a.info["stress"] = np.zeros(6)
    a.arrays["force"] = np.ones((len(a), 3))
    a.calc = Booby()
    clean = strip_labels(a)
    assert clean.calc is None
    assert set(clean.info) <= {"config_type"} and set(clean.arrays) == {"numbers", "positions"}
    np.testing.assert_array_equal(clean.positions, a.positions)
    np.testing.assert_array_equal(clean.cell.array, a.cell.array)


def test_vault_releases_labels_only_for_frozen_designs():
    frames = zr_example(6, seed=0)
    for k, a in enumerate(frames):
        a.info["energy"] = float(k)
    vault = LabelVault(frames)
    with pytest.raises(LabelAccessError, match="frozen by this vault"):
        vault.labels(FrozenDesign("forged", (0, 1), 0))
    other = LabelVault(frames).freeze("d", [0])
    with pytest.raises(LabelAccessError, match="frozen by this vault"):
        vault.labels(other)
    design = vault.freeze("d", [4, 2])
    np.testing.assert_array_equal(vault.labels(design).energy, [4.0, 2.0])
    assert all("energy" not in a.info and a.calc is None for a in vault.frames)


def test_selection_never_reads_labels():
    """The selector sees a model built from the vault's frames: identical designs whether the
    pool carries no labels or labels behind a calculator that raises on access."""
    frames = zr_example(30, seed=2)
    trapped = [a.copy() for a in frames]
    for a in trapped:
        a.calc = Booby()
    designs = []
    for pool in (frames, [strip_labels(a) for a in trapped]):
        model = build_model(pool, soap=SMALL, n_sparse=10)
        designs.append([select_design(s, model, 8, seed=1, frames=pool) for s in ("d", "random", "fps", "i")])
    assert designs[0] == designs[1]


@pytest.fixture(scope="module")
def labelled_zr():
    if not EAM_FILE.exists():
        pytest.skip("../shared/data/eam not present")
    return eam_labelled(zr_example(24, seed=0)), eam_labelled(zr_example(6, seed=7))


def test_shuffled_labels_give_identical_designs_and_different_errors(labelled_zr):
    pool, test = labelled_zr
    shuffled = [a.copy() for a in pool]
    rng = np.random.default_rng(3)
    for a, p in zip(shuffled, rng.permutation(len(pool))):
        a.info["energy"] = pool[p].info["energy"]
        a.arrays["force"] = rng.normal(size=(len(a), 3))
    config = BenchmarkConfig(budgets=[4, 8], strategies=["random", "d"], n_random=2, soap=SMALL, n_sparse=10,
                             noise=Noise(energy=0.001, force=0.1), include_full=False)
    a = run_benchmark(pool, {"test": test}, config, log=lambda m: None)
    b = run_benchmark(shuffled, {"test": test}, config, log=lambda m: None)
    assert a.designs == b.designs
    ea = [r["energy_rmse"] for r in a.rows]
    eb = [r["energy_rmse"] for r in b.rows]
    assert not np.allclose(ea, eb)


def test_reduced_benchmark_end_to_end(tmp_path, labelled_zr):
    """Two budgets, two strategies, small pool: CSV, PNG, summary; full-pool row equals an
    independent fit_gpr + predict evaluation."""
    pool, test = labelled_zr
    noise = Noise(energy=0.001, force=0.1)
    config = BenchmarkConfig(budgets=[5, 10], strategies=["random", "d", "nonexistent"], n_random=3, soap=SMALL,
                             n_sparse=10, noise=noise)
    result = run_benchmark(pool, {"test": test}, config, log=lambda m: None)
    paths = write_outputs(result, tmp_path / "out", title="tiny", command="pytest")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == (3 + 1) * 2 + 1
    assert {r["strategy"] for r in rows} == {"random", "d", "full"}
    assert any("nonexistent" in n for n in result.notes)
    assert paths["png_test"].stat().st_size > 1000
    summary = paths["summary"].read_text()
    assert "| 5 (21 %) |" in summary and "pytest" in summary
    # independent check of the full-pool number
    model = build_model(pool, soap=SMALL, n_sparse=10)
    gpr = fit_gpr(pool, read_labels(pool), soap=model.soap, kernel=Kernel(), noise=noise, sparse=model.sparse)
    err = evaluate(gpr.predict(test), read_labels(test)).overall()
    full = next(r for r in result.rows if r["strategy"] == "full")
    assert full["energy_rmse"] == pytest.approx(err["energy_rmse"], rel=1e-6)
    assert full["force_rmse"] == pytest.approx(err["force_rmse"], rel=1e-6)
    # nested designs: random seeds differ, d is deterministic
    assert result.designs[("random", 0)] != result.designs[("random", 1)]


def test_markdown_section_is_replaced_not_duplicated(tmp_path):
    path = tmp_path / "b.md"
    update_markdown_section(path, "mo", "first", header="# head")
    update_markdown_section(path, "zr", "zr text")
    update_markdown_section(path, "mo", "second")
    text = path.read_text()
    assert text.startswith("# head") and text.count("section:mo -->") == 2
    assert "second" in text and "first" not in text and "zr text" in text


def _curve_result(curves: dict, n_pool: int = 100):
    """A BenchmarkResult whose rows follow given (atoms, error) curves, one per strategy/seed."""
    from mlipdoe.bench import BenchmarkResult

    rows = []
    for (strategy, seed), pts in curves.items():
        for n, atoms, err in pts:
            rows.append({"strategy": strategy, "seed": seed, "n": n, "sparse": "", "test_set": "test",
                         "n_atoms": atoms, "cost3": float(atoms), "energy_rmse": err, "force_rmse": err})
    return BenchmarkResult(rows, [], {"total": 0.0}, BenchmarkConfig(budgets=[1]), n_pool, 10, ["test"])


def test_data_efficiency_of_power_law_curves_is_exact():
    """err = c·atoms^-½: a strategy reaching random's error with half the atoms has ratio 2."""
    from mlipdoe.bench import data_efficiency

    budgets = [5, 10, 20, 40]
    rnd = {("random", s): [(n, 10 * n, (10 * n) ** -0.5 * (1 + 0.01 * (s - 1))) for n in budgets] for s in range(3)}
    twice = {("twice", 0): [(n, 10 * n, (20 * n) ** -0.5) for n in budgets]}
    worse = {("worse", 0): [(n, 10 * n, 3 * (10 * n) ** -0.5) for n in budgets]}
    best = {("best", 0): [(n, 10 * n, 0.1 * (10 * n) ** -0.5) for n in budgets]}
    result = _curve_result({**rnd, **twice, **worse, **best})
    rel, ratio = data_efficiency(result, "twice", "energy_rmse")
    assert rel == "=" and ratio == pytest.approx(2.0, rel=1e-12)
    assert data_efficiency(result, "random", "force_rmse") == ("=", pytest.approx(1.0, rel=1e-12))
    rel, ratio = data_efficiency(result, "worse", "energy_rmse")          # never reaches: bound from the last budget
    assert rel == "<" and ratio == pytest.approx(200 / 400)
    rel, ratio = data_efficiency(result, "best", "energy_rmse")           # better already at the first budget
    assert rel == "≥" and ratio == pytest.approx(200 / 50)


def test_frame_errors_match_evaluate_and_bootstrap_brackets_them():
    from mlipdoe.bench import frame_errors
    from mlipdoe.fit import Labels, Prediction

    rng = np.random.default_rng(0)
    n = rng.integers(2, 9, size=40)
    forces = [rng.normal(size=(k, 3)) for k in n]
    labels = Labels(rng.normal(size=40), forces, n, [None] * 40)
    pred = Prediction(labels.energy + rng.normal(scale=0.1, size=40) * n,
                      [f + rng.normal(scale=0.2, size=f.shape) for f in forces], n)
    fe = frame_errors(pred, labels)
    ref = evaluate(pred, labels).overall()
    for key in ("energy_rmse", "energy_mae", "force_rmse", "force_mae"):
        assert fe.summary()[key] == pytest.approx(ref[key], rel=1e-12)
    ci = fe.bootstrap(2000, seed=1)
    assert ci["energy_rmse_lo"] < ref["energy_rmse"] < ci["energy_rmse_hi"]
    assert ci["force_rmse_lo"] < ref["force_rmse"] < ci["force_rmse_hi"]
    assert ci == fe.bootstrap(2000, seed=1)
    # equal errors on every frame: no spread to resample
    flat = frame_errors(Prediction(labels.energy + n * 0.5, forces, n), labels).bootstrap(100)
    assert flat["energy_rmse_lo"] == pytest.approx(0.5) and flat["energy_rmse_hi"] == pytest.approx(0.5)
