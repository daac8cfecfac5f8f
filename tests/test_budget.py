"""Budgets: costs, validation, and designs that never exceed their budget."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL_SOAP

import mlipdoe
from mlipdoe.api import select
from mlipdoe.budget import Budget, frame_costs
from mlipdoe.exceptions import InputError


@pytest.fixture(scope="module")
def mixed_frames():
    """Zr cells of 8, 15, 16 and 24 atoms."""
    from mlipdoe.generate import generate_strained

    out = []
    for k, (reps, vac) in enumerate([((2, 2, 1), 0), ((2, 2, 2), 1), ((2, 2, 2), 0), ((3, 2, 2), 0)]):
        out += generate_strained("Zr", n_frames=10, supercell=reps, vacancies=vac, max_strain=0.03, rattle=0.02,
                                 seed=10 + k, a=3.232, c=5.147)
    return out


@pytest.fixture(scope="module")
def mixed_model(mixed_frames):
    return mlipdoe.build_information_model(mixed_frames, soap=SMALL_SOAP, n_sparse=10)


def test_frame_costs(mixed_frames):
    n = np.array([len(a) for a in mixed_frames], dtype=float)
    np.testing.assert_array_equal(frame_costs(mixed_frames, "count"), np.ones(len(n)))
    np.testing.assert_array_equal(frame_costs(mixed_frames, "atoms"), n)
    np.testing.assert_allclose(frame_costs(mixed_frames, "cost", 3.0), n**3)
    np.testing.assert_allclose(frame_costs(mixed_frames, "cost", 2.5), n**2.5)
    frames = [a.copy() for a in mixed_frames[:3]]
    for k, a in enumerate(frames):
        a.info["cost"] = 10.0 + k
    np.testing.assert_allclose(frame_costs(frames, "cost"), [10, 11, 12])
    del frames[1].info["cost"]
    with pytest.raises(InputError, match="1 of 3|2 of 3"):
        frame_costs(frames, "cost")


def test_budget_validation():
    with pytest.raises(InputError, match="positive"):
        Budget("atoms", -5).validate()
    with pytest.raises(InputError, match="unknown budget kind"):
        Budget("hours", 5).validate()
    with pytest.raises(InputError, match="cost-power"):
        Budget("cost", 5, cost_power=0).validate()
    assert Budget("cost", 1000.0, 3.0).to_dict() == {"kind": "cost", "value": 1000, "cost_power": 3.0}


@pytest.mark.parametrize("criterion", ["d", "i", "g", "maximin", "fps"])
@pytest.mark.parametrize("kind", ["atoms", "cost"])
def test_budget_never_exceeded_and_filled(criterion, kind, mixed_frames, mixed_model):
    n = np.array([len(a) for a in mixed_frames], dtype=float)
    costs = n if kind == "atoms" else n**3
    value = 130 if kind == "atoms" else 2.5e4
    kw = {"budget_atoms": value} if kind == "atoms" else {"budget_cost": value, "cost_power": 3.0}
    include = [0, 20]
    r = select(mixed_frames, criterion=criterion, model=mixed_model, include=include, **kw)
    spent = costs[r.selected].sum()
    assert spent <= value
    assert r.record.budget["kind"] == kind and r.record.budget["spent"] == pytest.approx(spent)
    # filled: no unselected, non-fixed frame still fits
    rest = [i for i in range(len(n)) if i not in r.selected and i not in include]
    assert costs[rest].min() > value - spent
    assert not set(r.selected) & set(include) and len(set(r.selected)) == len(r.selected)


@pytest.mark.parametrize("kind", ["atoms", "cost"])
def test_budget_with_exchange_never_exceeded(kind, mixed_frames, mixed_model):
    n = np.array([len(a) for a in mixed_frames], dtype=float)
    costs = n if kind == "atoms" else n**3
    value = 100 if kind == "atoms" else 1.5e4
    kw = {"budget_atoms": value} if kind == "atoms" else {"budget_cost": value}
    r = select(mixed_frames, criterion="i", optimizer="exchange", restarts=2, model=mixed_model, **kw)
    assert costs[r.selected].sum() <= value
    assert r.record.extras["optimizer_details"]["exchange"]["value"] >= \
        r.record.extras["optimizer_details"]["exchange"]["greedy_value"]


def test_cost_greedy_prefers_cheap_information(mixed_frames, mixed_model):
    """Under an n³ cost budget D picks more, smaller frames than under a frame count."""
    by_cost = select(mixed_frames, criterion="d", model=mixed_model, budget_cost=3 * 24**3)
    sizes = [len(mixed_frames[i]) for i in by_cost.selected]
    assert len(by_cost.selected) > 3 and min(sizes) == 8
    assert by_cost.record.extras["optimizer_details"]["phases"][0] == "ratio"


def test_budget_smaller_than_cheapest_frame(mixed_frames, mixed_model):
    with pytest.raises(InputError, match="smaller than the cheapest available frame"):
        select(mixed_frames, model=mixed_model, budget_atoms=7)
    with pytest.raises(InputError, match="smaller than the cheapest"):
        select(mixed_frames, model=mixed_model, budget_cost=8**3 - 1)


def test_exactly_one_budget(mixed_frames, mixed_model):
    with pytest.raises(InputError, match="exactly one budget"):
        select(mixed_frames, model=mixed_model, n=3, budget_atoms=100)
    with pytest.raises(InputError, match="exactly one budget"):
        select(mixed_frames, model=mixed_model)


class _Scaled:
    """A criterion whose values and gains are multiplied by ``s`` (same design problem)."""

    def __init__(self, inner, s):
        self.inner, self.s = inner, s
        self.submodular = inner.submodular

    def gains(self, candidates):
        return self.s * self.inner.gains(candidates)

    def add(self, index):
        return self.s * self.inner.add(index)

    def value(self):
        return self.s * self.inner.value()

    def tie_break(self, candidates):
        return self.inner.tie_break(candidates)

    def snapshot(self):
        return self.inner.snapshot()

    def restore(self, snap):
        self.inner.restore(snap)


def _cost_run(model, name, costs, budget, *, scale=None, **kw):
    from mlipdoe.criteria import make_criterion
    from mlipdoe.optimizers import cost_greedy

    crit = make_criterion(name).initialize(model)
    target = crit if scale is None else _Scaled(crit, scale)
    return crit, cost_greedy(target, costs, budget, available=np.ones(model.n_frames, dtype=bool), **kw)


@pytest.mark.parametrize("name", ["d", "a", "i", "g", "e"])
@pytest.mark.parametrize("kind", ["atoms", "cost"])
def test_cost_greedy_is_scale_free(name, kind, mixed_frames, mixed_model):
    """The picks depend on the criterion's own scale only: the I/A/G variances (~1e-7) or
    the same criterion times 1e-12 or 1e6 give the same design, every pick by gain/cost."""
    n = np.array([len(a) for a in mixed_frames], dtype=float)
    costs, budget = (n, 130.0) if kind == "atoms" else (n**3, 2.5e4)
    _, ref = _cost_run(mixed_model, name, costs, budget)
    for s in (1e-12, 1e6):
        _, run = _cost_run(mixed_model, name, costs, budget, scale=s)
        assert run.selected == ref.selected and run.extra["branch"] == ref.extra["branch"]
    ratio = ref.extra["branches"]["ratio"]
    assert len(ratio["selected"]) > 1 and "fill" not in ref.extra["phases"]


@pytest.mark.parametrize("kind", ["atoms", "cost"])
def test_lazy_cost_greedy_same_picks_fewer_evaluations(kind, mixed_frames, mixed_model):
    n = np.array([len(a) for a in mixed_frames], dtype=float)
    costs, budget = (n, 200.0) if kind == "atoms" else (n**3, 6e4)
    crit_p, plain = _cost_run(mixed_model, "d", costs, budget, lazy=False)
    crit_l, lazy = _cost_run(mixed_model, "d", costs, budget, lazy=True)
    assert lazy.extra["lazy"] and not plain.extra["lazy"]
    for b in ("ratio", "gain"):
        assert lazy.extra["branches"][b]["selected"] == plain.extra["branches"][b]["selected"]
    assert lazy.selected == plain.selected and lazy.extra["branch"] == plain.extra["branch"]
    assert lazy.n_evaluations < plain.n_evaluations
    # the criterion is left in the kept design's state, from scratch
    assert crit_l.value() == pytest.approx(mixed_model.d_value(lazy.selected), rel=1e-10)
    assert crit_p.value() == pytest.approx(mixed_model.d_value(plain.selected), rel=1e-10)


def test_lazy_only_for_submodular_criteria(mixed_frames, mixed_model):
    n = np.array([len(a) for a in mixed_frames], dtype=float)
    _, run = _cost_run(mixed_model, "i", n, 130.0, lazy=True)
    assert run.extra["lazy"] is False


def test_safeguard_keeps_the_better_run_and_records_both(mixed_frames, mixed_model):
    """Costs that make the small frames look best per cost while one large frame plus
    small ones carries more information: the plain-gain run wins, is kept, and the
    criterion is left in its state."""
    n = np.array([len(a) for a in mixed_frames], dtype=float)
    costs = np.where(n == 8, 1.0, 100.0)
    budget = 109.0  # all ten small frames, or one large frame and nine small ones
    crit, run = _cost_run(mixed_model, "d", costs, budget)
    b = run.extra["branches"]
    assert set(b) == {"ratio", "gain"} and run.extra["branch"] == "gain"
    assert all(n[i] == 8 for i in b["ratio"]["selected"])
    assert b["gain"]["value"] > b["ratio"]["value"] and run.selected == b["gain"]["selected"]
    for branch in b.values():  # recorded values are those of the recorded designs
        assert branch["value"] == pytest.approx(mixed_model.d_value(branch["selected"]), rel=1e-10)
        assert branch["spent"] == costs[branch["selected"]].sum() <= budget
    assert crit.value() == pytest.approx(b["gain"]["value"], rel=1e-12)
    single = run.extra["best_singleton"]
    best = max(mixed_model.d_value([j]) for j in range(len(n)))
    assert single["value"] == pytest.approx(best, rel=1e-10) == mixed_model.d_value([single["index"]])
    assert run.extra["phases"] == ["gain"] * len(run.selected)
