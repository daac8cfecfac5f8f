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
