"""The ``quests`` criterion: gains and values against a brute-force recomputation with
quests' own entropy / differential-entropy functions, picks against quests' own MSC
routine, determinism, label independence and the optimizers."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

from mlipdoe.criteria import make_criterion
from mlipdoe.exceptions import ConfigurationError
from mlipdoe.optimizers import greedy, lazy_greedy

quests_entropy = pytest.importorskip("quests.entropy")
quests_descriptor = pytest.importorskip("quests.descriptor")
quests_fps = pytest.importorskip("quests.compression.fps")

H = quests_entropy.DEFAULT_BANDWIDTH
#: δH of an environment whose kernel sum underflows to 0 (the criterion's documented floor).
DH_CAP = -np.log(np.nextafter(0.0, 1.0))


@pytest.fixture(scope="module")
def frames():
    """16 Zr frames of 2, 8 and 16 atoms, lightly to strongly rattled."""
    from mlipdoe.generate import zr_example

    return (zr_example(6, seed=1, supercell=(2, 2, 1)) + zr_example(6, seed=2, rattle=0.2, supercell=(2, 2, 2))
            + zr_example(4, seed=3, rattle=0.08, supercell=(1, 1, 1)))


@pytest.fixture(scope="module")
def descriptors(frames):
    """QUESTS descriptors computed frame by frame, as ``quests compress`` does."""
    return [quests_descriptor.get_descriptors([a]) for a in frames]


def pool_of(frames):
    return SimpleNamespace(n_frames=len(frames))


def brute_scores(descriptors, design, candidates):
    """MSC score of each candidate from scratch: max_e δH(e | design) + H(frame)."""
    out = []
    ref = np.vstack([descriptors[s] for s in design]) if design else None
    for c in candidates:
        x = descriptors[c]
        own = quests_entropy.entropy(x, h=H)
        if ref is None:
            out.append(DH_CAP + own)
        else:
            with np.errstate(divide="ignore"):
                dH = quests_entropy.delta_entropy(x, ref, h=H)
            out.append(min(float(dH.max()), DH_CAP) + own)
    return np.array(out)


def test_first_picks_gains_and_values_match_brute_force(frames, descriptors):
    crit = make_criterion("quests", frames=frames).initialize(pool_of(frames))
    design: list[int] = []
    value = 0.0
    for _ in range(3):
        rest = np.array([i for i in range(len(frames)) if i not in design])
        expected = brute_scores(descriptors, design, rest)
        got = crit.gains(rest)
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        best = int(rest[np.argmax(expected)])
        run = greedy(crit, 1, available=np.isin(np.arange(len(frames)), rest))
        assert run.selected == [best]
        design.append(best)
        new_value = float(quests_entropy.entropy(np.vstack([descriptors[s] for s in design]), h=H))
        assert crit.value() == pytest.approx(new_value, rel=1e-10, abs=1e-12)
        assert run.gains[0] == pytest.approx(new_value - value, rel=1e-9, abs=1e-12)
        value = new_value
    # the first pick is the frame of largest own entropy
    own = [quests_entropy.entropy(x, h=H) for x in descriptors]
    assert design[0] == int(np.argmax(own))


def test_greedy_reproduces_quests_msc(frames, descriptors):
    own = np.array([quests_entropy.entropy(x, h=H) for x in descriptors])
    crit = make_criterion("quests", frames=frames).initialize(pool_of(frames))
    run = greedy(crit, 10, available=np.ones(len(frames), dtype=bool))
    assert run.selected == [int(i) for i in quests_fps.msc(descriptors, own.copy(), 10, h=H)]


def test_fixed_and_existing_frames_reproduce_msc_conditional(frames, descriptors):
    own = np.array([quests_entropy.entropy(x, h=H) for x in descriptors])
    fixed, existing = [3, 9], [descriptors[0], descriptors[14]]
    rest = [i for i in range(len(frames)) if i not in fixed + [0, 14]]
    expected = quests_fps.msc_conditional([descriptors[i] for i in rest], own[rest].copy(), 5,
                                          reference=existing + [descriptors[i] for i in fixed], h=H)
    available = np.isin(np.arange(len(frames)), rest)
    crit = make_criterion("quests", descriptors=descriptors, existing_descriptors=existing)
    crit.initialize(pool_of(frames), fixed=fixed)
    run = greedy(crit, 5, available=available)
    assert run.selected == [rest[i] for i in expected]
    design = np.vstack(existing + [descriptors[i] for i in fixed + run.selected])
    assert crit.value() == pytest.approx(quests_entropy.entropy(design, h=H), rel=1e-10)


def test_deterministic_and_seed_free(frames):
    runs, gains = [], []
    for seed in (0, 0, 7):
        crit = make_criterion("quests", frames=frames).initialize(pool_of(frames), seed=seed)
        gains.append(crit.gains(np.arange(len(frames))))
        runs.append(greedy(crit, 8, available=np.ones(len(frames), dtype=bool)).selected)
    assert runs[0] == runs[1] == runs[2]
    assert np.array_equal(gains[0], gains[1]) and np.array_equal(gains[0], gains[2])


class _Forbidden(Calculator):
    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, *args, **kwargs):
        raise AssertionError("the quests criterion read a label")


def test_never_reads_labels(frames):
    rng = np.random.default_rng(0)
    labelled, forbidden = [], []
    for a in frames:
        b = a.copy()
        b.info["energy"] = float(rng.normal())
        b.arrays["force"] = rng.normal(size=(len(b), 3))
        b.calc = SinglePointCalculator(b, energy=float(rng.normal()), forces=rng.normal(size=(len(b), 3)))
        labelled.append(b)
        c = a.copy()
        c.calc = _Forbidden()
        forbidden.append(c)
    stripped = []
    for a in labelled:
        b = a.copy()
        b.info.pop("energy")
        del b.arrays["force"]
        stripped.append(b)
    picks = []
    for pool in (labelled, stripped, forbidden):
        crit = make_criterion("quests", frames=pool).initialize(pool_of(pool))
        picks.append(greedy(crit, 6, available=np.ones(len(pool), dtype=bool)).selected)
    assert picks[0] == picks[1] == picks[2]


def test_runs_through_the_optimizers_on_an_information_model(frames):
    import mlipdoe
    from conftest import SMALL_SOAP

    model = mlipdoe.build_information_model(frames, soap=SMALL_SOAP, n_sparse=8)
    crit = make_criterion("quests", lenient=True, frames=frames, vectors=np.zeros((len(frames), 3)), target=None)
    crit.initialize(model)
    available = np.ones(len(frames), dtype=bool)
    plain = greedy(crit, 6, available=available)
    values = list(plain.values)
    crit.reset()
    lazy = lazy_greedy(crit, 6, available=available)
    assert lazy.selected == plain.selected and lazy.extra["saved_fraction"] > 0
    np.testing.assert_allclose(lazy.values, values, rtol=1e-12)
    # removal and snapshots: back to the state of the remaining members
    snap = crit.snapshot()
    removed = plain.selected[2]
    delta = crit.remove(removed)
    rest = [s for s in plain.selected if s != removed]
    X = [crit._frame(s) for s in rest]
    assert crit.value() == pytest.approx(quests_entropy.entropy(np.vstack(X), h=H), rel=1e-10)
    assert delta == pytest.approx(crit.value() - values[-1], rel=1e-9, abs=1e-12)
    crit.restore(snap)
    assert crit.value() == values[-1] and crit.members == plain.selected


def test_options_are_checked(frames, descriptors):
    with pytest.raises(ConfigurationError, match="needs the pool frames"):
        make_criterion("quests").initialize(pool_of(frames))
    with pytest.raises(ConfigurationError, match="descriptor frames for a pool of 5"):
        make_criterion("quests", descriptors=descriptors).initialize(SimpleNamespace(n_frames=5))
    with pytest.raises(ConfigurationError, match="bandwidth must be a positive"):
        make_criterion("quests", descriptors=descriptors, bandwidth=0.0).initialize(pool_of(frames))
    with pytest.raises(ConfigurationError, match="k must be a whole number"):
        make_criterion("quests", frames=frames, k=1).initialize(pool_of(frames))


def test_missing_quests_is_a_configuration_error(frames, monkeypatch):
    for name in ("quests", "quests.descriptor", "quests.entropy"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigurationError, match=r"pip install 'mlipdoe\[baselines\]'"):
        make_criterion("quests", frames=frames).initialize(pool_of(frames))


def test_mlipdoe_imports_without_quests():
    code = ("import sys; sys.modules['quests'] = None; import mlipdoe, mlipdoe.criteria; "
            "assert 'quests' in mlipdoe.criteria.CRITERIA; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
