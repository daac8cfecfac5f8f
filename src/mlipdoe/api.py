"""The notebook-sized public API: pool → model → selection → record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from .budget import Budget, uses_info_costs
from .criteria import (
    CRITERIA,
    existing_rows,
    make_criterion,
    mean_pooled_descriptors,
    target_rows,
)
from .descriptors import SOAP
from .design import DesignRecord, read_record
from .exceptions import ConfigurationError, InputError
from .hypers import TARGET_OBSERVABLES, DesignConfig, ModelConfig, Noise
from .model import InformationModel, build_model
from .model.gap_featomic import check_species
from .model.kernels import Kernel
from .model.rows import mean_force_moment
from .optimizers import cost_greedy, exchange, greedy, lazy_greedy
from .pool import Pool, pool_from_frames, read_pool
from .progress import NULL_PROGRESS, Progress


def as_pool(pool) -> Pool:
    """A :class:`Pool` from a Pool, a list of Atoms, or one or several file paths."""
    if isinstance(pool, Pool):
        return pool
    if isinstance(pool, (str, Path)):
        return read_pool([pool])
    if isinstance(pool, Sequence) and pool and all(isinstance(a, Atoms) for a in pool):
        return pool_from_frames(list(pool))
    if isinstance(pool, Sequence) and pool and all(isinstance(p, (str, Path)) for p in pool):
        return read_pool(list(pool))
    raise InputError("pool must be a Pool, a list of ase.Atoms or file path(s)")


def build_information_model(pool, *, soap: SOAP = SOAP(), kernel: Kernel = Kernel(), noise: Noise = Noise(),
                            observations: Sequence[str] = ("energy",), n_sparse=100, sparse_method: str = "cur",
                            seed: int = 0, chunk_size: int = 100, progress: Progress = NULL_PROGRESS,
                            sparse_locations=None) -> InformationModel:
    """:func:`mlipdoe.model.gap_featomic.build_model` on a pool (see there)."""
    config = ModelConfig(soap=soap, kernel=kernel, noise=noise, observations=tuple(observations), n_sparse=n_sparse,
                         sparse_method=sparse_method, seed=seed)
    return model_for(pool, config, chunk_size=chunk_size, progress=progress, sparse_locations=sparse_locations)


def model_for(pool, config: ModelConfig, *, chunk_size: int = 100, progress: Progress = NULL_PROGRESS,
              sparse_locations=None) -> InformationModel:
    """The information model of ``config`` on ``pool`` (sparse points chosen, or at ``sparse_locations``)."""
    pool = as_pool(pool)
    config.validate()
    if config.linear is not None:
        from .model.linear_model import build_linear_model

        return build_linear_model(pool.frames, config.linear.basis, prior_precision=config.linear.prior_precision,
                                  noise=config.noise, observations=config.observations, seed=config.seed,
                                  config_types=pool.config_types, progress=progress)
    if config.gap is not None:
        from .model.gap_quippy import build_gap_model

        return build_gap_model(pool.frames, config.gap, observations=config.observations, seed=config.seed,
                               config_types=pool.config_types, sparse_locations=sparse_locations, progress=progress)
    return build_model(
        pool.frames, soap=config.soap, kernel=config.kernel, noise=config.noise, observations=config.observations,
        n_sparse=config.n_sparse, sparse_method=config.sparse_method, seed=config.seed, chunk_size=chunk_size,
        config_types=pool.config_types, sparse_locations=sparse_locations, progress=progress,
    )


@dataclass
class SelectionResult:
    """What :func:`select` returns.

    Attributes
    ----------
    selected : list of int
        Pool indices in selection order.
    gains : list of float
        Realised criterion increment of each pick.
    value : float
        Criterion value of fixed + selected frames.
    values : list of float
        Value after each pick (the design curve).
    """

    selected: list[int]
    gains: list[float]
    value: float
    values: list[float]
    record: DesignRecord
    model: InformationModel
    pool: Pool
    stopped_by: str = "n"
    extra: dict = field(default_factory=dict)


def _frames_and_file(source, what: str):
    """(frames, file dict) of a Pool, list of Atoms or path(s); None passes through."""
    if source is None:
        return None, None
    try:
        p = as_pool(source)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    files = [f.to_dict() for f in p.files]
    info = files[0] if len(files) == 1 else {"files": files}
    info = dict(info)
    info["n_frames"] = len(p)
    return p.frames, info


def resolve_frames(spec, pool: Pool, what: str) -> list[int]:
    """Pool indices named by ``spec``: ints (pool index) and/or strings (config_type).

    Strings that are whole numbers count as indices. Raises :class:`InputError` for an
    index outside the pool or a config_type no frame has.
    """
    if spec is None:
        return []
    if isinstance(spec, (str, int, np.integer)):
        spec = [spec]
    out: list[int] = []
    cts = pool.config_types
    for item in spec:
        if isinstance(item, str) and item.strip().lstrip("-").isdigit():
            item = int(item)
        if isinstance(item, (int, np.integer)):
            if not 0 <= int(item) < len(pool):
                raise InputError(f"{what} frame index {int(item)} is outside the pool ({len(pool)} frames)")
            out.append(int(item))
        else:
            hits = [k for k, ct in enumerate(cts) if ct == str(item)]
            if not hits:
                known = sorted({str(c) for c in cts if c is not None})
                raise InputError(f"{what}: no pool frame has config_type {str(item)!r} "
                                 f"(known: {', '.join(known) or 'none'})")
            out.extend(hits)
    return list(dict.fromkeys(out))


def _as_spec_list(spec) -> list:
    """include/exclude as given, JSON-ready (ints stay ints, config_types strings)."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, int, np.integer)) else list(spec)
    return [x if isinstance(x, str) else int(x) for x in items]


def make_budget(*, n=None, budget_atoms=None, budget_cost=None, cost_power: float = 3.0) -> Budget:
    """The one budget given (``n``, ``budget_atoms`` or ``budget_cost``), validated."""
    given = [(k, v) for k, v in (("count", n), ("atoms", budget_atoms), ("cost", budget_cost)) if v is not None]
    if len(given) != 1:
        raise InputError("give exactly one budget: -n (frames), --budget-atoms or --budget-cost")
    kind, value = given[0]
    if kind == "count" and (not isinstance(value, (int, np.integer)) or value <= 0):
        raise InputError(f"n must be a positive number of frames, got {value}")
    return Budget(kind, float(value), float(cost_power)).validate()


def target_moment(model: InformationModel, observable: str, target_frames=None) -> np.ndarray:
    """The i criterion's target moment B (value −tr(C B)) for a target observable.

    ``energy``: mean per-atom energy variance; ``forces``: mean force-component variance
    (needs force rows: the pool's with ``--observe energy,forces``, or the target frames');
    ``energy,forces``: v_E/σ_E² + v_F/σ_F² with the model's default σ_E (eV/atom) and σ_F
    (eV/Å), each variance in units of its noise, as gap_fit weighs them.
    """
    from .criteria.trace import energy_moment

    if observable == "energy":
        return energy_moment(target_rows(model, target_frames))
    if target_frames is not None:
        forces = mean_force_moment(model.force_variance_rows(target_frames))
    elif model.pool_force_moment is not None:
        forces = model.pool_force_moment
    else:
        raise ConfigurationError(f"--target-observable {observable} with the pool as target needs --observe "
                                 "energy,forces")
    if observable == "forces":
        return forces
    noise = model.noise
    return energy_moment(target_rows(model, target_frames)) / noise.energy**2 + forces / noise.force**2


def criterion_inputs(name: str, model: InformationModel, pool: Pool, *, target_frames=None, existing_frames=None,
                     vectors=None, target_observable: str = "energy") -> dict:
    """Options for :func:`make_criterion`: target rows (i, g), existing rows, pool frames (fps, cur)."""
    opts: dict = {}
    if existing_frames is not None:
        opts["existing"] = existing_rows(model, existing_frames)
    if target_observable not in TARGET_OBSERVABLES:
        raise ConfigurationError(f"target observable must be one of {', '.join(TARGET_OBSERVABLES)}, got "
                                 f"{target_observable!r}")
    if target_observable != "energy":
        if name != "i":
            raise ConfigurationError(f"--target-observable {target_observable} is available for the i criterion only")
        opts["force_moment"] = target_moment(model, target_observable, target_frames)
        return opts
    if target_frames is not None:
        if name not in ("i", "g"):
            raise ConfigurationError(f"criterion {name} does not use a target set (only i and g do): "
                                     "drop the target or choose --criterion i or g")
        opts["target"] = target_rows(model, target_frames)
    if name in ("fps", "cur"):
        if vectors is not None:
            opts["vectors"] = vectors
        else:
            opts["frames"] = pool.frames
    elif name == "quests":
        opts["frames"] = pool.frames
    return opts


def select(pool, *, n: int | None = None, criterion: str = "d", optimizer: str = "greedy", restarts: int = 0,
           max_iter: int = 100, budget_atoms: float | None = None, budget_cost: float | None = None,
           cost_power: float = 3.0, target=None, target_observable: str = "energy", existing=None, include=(),
           exclude=(), soap: SOAP = SOAP(), kernel: Kernel = Kernel(), noise: Noise = Noise(),
           observations: Sequence[str] = ("energy",), n_sparse=100, sparse_method: str = "cur", seed: int = 0,
           threshold: float | None = None, fixed: Sequence[int] = (), model: InformationModel | None = None,
           lazy: bool = True, chunk_size: int = 100, progress: Progress = NULL_PROGRESS) -> SelectionResult:
    """Choose frames of ``pool`` that maximise ``criterion`` within a budget.

    Parameters
    ----------
    pool : Pool, list of ase.Atoms, path or list of paths
    n : int, optional
        Number of frames to pick (besides fixed/included frames).
    criterion : str
        One of :data:`mlipdoe.criteria.CRITERIA`: d, a, i, g, e, maximin, random, fps, cur, quests.
    optimizer : {"greedy", "exchange"}
        Greedy (lazy automatically for submodular criteria, under any budget, unless
        ``lazy=False``), or greedy followed by Fedorov exchange with ``restarts``
        random restarts and at most ``max_iter`` swaps per run.
    budget_atoms, budget_cost, cost_power
        The other budgets (exactly one of ``n``/``budget_atoms``/``budget_cost``):
        Σ n_s ≤ budget_atoms, or Σ cost(s) ≤ budget_cost with cost(s) = n_s^cost_power
        or ``info["cost"]``. Cost-aware greedy, see :func:`mlipdoe.optimizers.cost_greedy`.
    target : Pool, list of Atoms or path, optional
        Where the potential will be used (criteria ``i`` and ``g``; default the pool).
    target_observable : {"energy", "forces", "energy,forces"}
        What ``i`` averages over the target: the per-atom energy variance (default),
        the mean force-component variance tr(C A), A = mean_t B_tᵀB_t (docs/forces.md), or
        their sum in units of the noise, v_E/σ_E² + v_F/σ_F² (:func:`target_moment`).
    existing : Pool, list of Atoms or path, optional
        A training set already computed: its rows enter F(S) first, never removed.
    include, exclude : sequences of int (pool index) or str (config_type)
        Pool frames forced into the design (treated as fixed: already in the training
        set, not charged to the budget) or never chosen.
    observations : tuple of {"energy", "forces", "virials"}
        Passed to :func:`build_information_model` (with ``noise``'s σ_F, σ_V).
    threshold : float, optional
        Stop early when the best gain falls below it.
    fixed : sequence of int
        Pool frames already in the training set (same as ``include`` by index).
    model : InformationModel, optional
        Reuse a model built by :func:`build_information_model` on the same pool.
    lazy : bool
        Allow lazy greedy (Minoux 1978) for submodular criteria; same design, fewer
        gain evaluations (``result.extra["saved_fraction"]``).
    max_iter : int
        Most swaps per exchange run.

    Raises
    ------
    InputError
        Bad combinations: a frame both included and excluded, a budget smaller than the
        cheapest frame, a target/existing frame with species the sparse points do not
        cover, more frames requested than available.
    """
    if not isinstance(restarts, (int, np.integer)) or restarts < 0:
        raise InputError(f"restarts must be a whole number >= 0, got {restarts}")
    config = DesignConfig(
        model=ModelConfig(soap=soap, kernel=kernel, noise=noise, observations=tuple(observations), n_sparse=n_sparse,
                          sparse_method=sparse_method, seed=seed),
        criterion=criterion, optimizer=optimizer, restarts=int(restarts), max_iter=int(max_iter), threshold=threshold,
        target_observable=target_observable, lazy=lazy,
        budget=make_budget(n=n, budget_atoms=budget_atoms, budget_cost=budget_cost, cost_power=cost_power))
    return design(pool, config, target=target, existing=existing, include=include, exclude=exclude, fixed=fixed,
                  model=model, chunk_size=chunk_size, progress=progress)


def design(pool, config: DesignConfig, *, target=None, existing=None, include=(), exclude=(),
           fixed: Sequence[int] = (), model: InformationModel | None = None, chunk_size: int = 100,
           progress: Progress = NULL_PROGRESS) -> SelectionResult:
    """The selection workflow: frames → model rows → criterion → optimizer → design record.

    ``config`` (:class:`~mlipdoe.hypers.DesignConfig`) holds everything the design depends on
    and is written into the record (``DesignConfig.from_record`` reads it back); the other
    arguments name frames (see :func:`select`). ``model``, when given, must have been built
    with ``config.model`` on this pool.
    """
    pool = as_pool(pool)
    config.validate()
    budget = config.budget
    fixed_idx, excluded, available = _candidates(pool, fixed, include, exclude)
    costs = budget.costs(pool.frames, n_atoms=pool.n_atoms)
    budget.check_affordable(costs, available)
    if budget.kind == "count" and int(budget.value) > int(available.sum()):
        raise InputError(f"n = {int(budget.value)} exceeds the {int(available.sum())} frames available in the pool")
    target_frames, target_info = _frames_and_file(target, "target")
    existing_frames, existing_info = _frames_and_file(existing, "existing")
    if model is None:
        model = model_for(pool, config.model, chunk_size=chunk_size, progress=progress)
    if target_frames is not None:
        check_species(target_frames, model.sparse.species, what="target frame")
    t0 = time.perf_counter()
    opts = criterion_inputs(config.criterion, model, pool, target_frames=target_frames,
                            existing_frames=existing_frames, target_observable=config.target_observable)
    crit = make_criterion(config.criterion, lenient=True, **opts)
    crit.initialize(model, fixed=fixed_idx, seed=config.model.seed)
    run, details = _search(crit, config, costs, available, progress)
    spent = float(costs[run.selected].sum()) if run.selected else 0.0
    timings = dict(model.timings, selection=time.perf_counter() - t0)
    budget_dict = budget.to_dict()
    budget_dict["spent"] = int(spent) if spent.is_integer() else spent
    if budget.kind == "cost":
        budget_dict["cost_source"] = "info" if uses_info_costs(pool.frames) else "n_atoms^p"
    model_fields = model.record_fields()
    extras = {
        "sparse_method": model.sparse_method,
        "n_sparse": config.model.to_dict()["n_sparse"],
        "search": config.to_dict()["search"],
        "jitter": model.jitter,
        "sparse_points_dropped": model.sparse.dropped,
        "threshold": config.threshold,
        "stopped_by": run.stopped_by,
        "n_gain_evaluations": run.n_evaluations,
        "optimizer_details": details,
        "include": _as_spec_list(include),
        "exclude": _as_spec_list(exclude),
        "target_observable": config.target_observable,
        "excluded": excluded,
    }
    if getattr(model, "store_info", None):
        extras["store"] = model.store_info
    if existing_info is not None:
        extras["existing"] = existing_info
    if target_info is not None:
        extras["target"] = target_info
    record = DesignRecord(
        pool=[f.to_dict() for f in pool.files], descriptor=model_fields["descriptor"], kernel=model_fields["kernel"],
        noise=model.noise.to_dict(), observations=list(model.observations),
        sparse_points=model.sparse.location_list(), criterion=config.criterion, optimizer=config.optimizer,
        seed=int(config.model.seed), budget=budget_dict, fixed=fixed_idx, selected=[int(x) for x in run.selected],
        gains=[float(g) for g in run.gains], value=float(crit.value()), log_det_K_MM=model.log_det_K_MM,
        timings_s={k: round(v, 6) for k, v in timings.items()}, extras=extras, notes=list(model.notes),
    )
    return SelectionResult(list(run.selected), list(run.gains), float(crit.value()), list(run.values), record, model,
                           pool, run.stopped_by, extra=details)


def _candidates(pool: Pool, fixed, include, exclude):
    """(fixed + included indices, excluded indices, available mask) of the pool."""
    fixed_idx = list(dict.fromkeys(resolve_frames(list(fixed), pool, "fixed") + resolve_frames(include, pool, "include")))
    excluded = resolve_frames(exclude, pool, "exclude")
    both = sorted(set(fixed_idx) & set(excluded))
    if both:
        raise InputError(f"frame {both[0]} is both included (or fixed) and excluded; drop it from one of them")
    available = np.ones(len(pool), dtype=bool)
    available[fixed_idx] = False
    available[excluded] = False
    if not available.any():
        raise InputError("no pool frames are left to choose from after include/exclude")
    return fixed_idx, excluded, available


def _search(crit, config: DesignConfig, costs: np.ndarray, available: np.ndarray, progress):
    """Run the optimizer of ``config`` on an initialised criterion: (run with the final picks, details)."""
    budget, details = config.budget, {}
    if budget.kind == "count":
        use_lazy = bool(config.lazy and crit.submodular)
        run_fn = lazy_greedy if use_lazy else greedy
        run = run_fn(crit, int(budget.value), available=available, threshold=config.threshold, progress=progress)
        details.update(lazy=use_lazy, **{k: v for k, v in run.extra.items() if k != "lazy"})
    else:
        run = cost_greedy(crit, costs, budget.value, available=available, threshold=config.threshold,
                          lazy=config.lazy, progress=progress)
        details.update(run.extra)
    details["n_gain_evaluations"] = run.n_evaluations
    if config.optimizer == "exchange":
        greedy_value = float(crit.value())
        ex = exchange(crit, run.selected, available=available, max_iter=config.max_iter, restarts=config.restarts,
                      seed=config.model.seed, costs=None if budget.kind == "count" else costs,
                      budget=None if budget.kind == "count" else budget.value, progress=progress)
        details["exchange"] = {"greedy_value": greedy_value, "start_value": ex.start_value, "value": ex.value,
                               "history": ex.history, "n_swaps": ex.n_swaps, "n_evaluations": ex.n_evaluations,
                               "restarts": config.restarts, "max_iter": config.max_iter, "stopped_by": ex.stopped_by,
                               "runs": [{k: v for k, v in r.items() if k != "history"} for r in ex.runs]}
        run.selected, run.gains, run.values = list(ex.selected), list(ex.gains), list(ex.values)
    return run, details


def score(pool, *, design, model: InformationModel | None = None, target=None, existing=None,
          criteria: Sequence[str] | None = None, n_sparse=100, soap: SOAP = SOAP(), seed: int = 0,
          progress: Progress = NULL_PROGRESS) -> dict:
    """Evaluate every criterion on a given set of frames, on equal terms.

    Parameters
    ----------
    pool : Pool, list of ase.Atoms or path(s)
    design : DesignRecord, path of a design record, or sequence of int
        A record (its fixed + selected frames, its model) or pool indices.
    model : InformationModel, optional
        Default: rebuilt from the record, or built with ``n_sparse``/``soap``/``seed``
        for plain indices.
    target : Pool, list of Atoms or path, optional
        Target of ``i``/``g`` (default: the pool).
    existing : optional
        Frames outside the pool in the training set (default: the record's
        ``existing`` file if it is still at its path).
    criteria : sequence of str, optional
        Default: every criterion except ``random`` (whose value is ``d``'s).

    Returns
    -------
    dict
        ``{"frames": [...], "n_frames", "n_atoms", "M", "target", "criteria": {name: value},
        "mean_target_variance", "max_target_variance"}``.
    """
    pool = as_pool(pool)
    record = None
    if isinstance(design, DesignRecord) or isinstance(design, (str, Path)):
        record = design if isinstance(design, DesignRecord) else read_record(design)
        indices = [int(i) for i in list(record.fixed) + list(record.selected)]
        if model is None:
            model = model_from_record(record, pool, progress=progress)
        if existing is None and "existing" in record.extras:
            path = record.extras["existing"].get("path")
            if path and Path(path).is_file():
                existing = path
    else:
        indices = [int(i) for i in design]
        if model is None:
            model = build_information_model(pool, soap=soap, n_sparse=n_sparse, seed=seed, progress=progress)
    if not indices:
        raise InputError("the design to score has no frames")
    bad = [i for i in indices if not 0 <= i < len(pool)]
    if bad:
        raise InputError(f"design frame index {bad[0]} is outside the pool ({len(pool)} frames)")
    if len(set(indices)) != len(indices):
        raise InputError("the design to score lists a frame twice")
    if model.n_frames != len(pool):
        raise InputError(f"the model has {model.n_frames} frames but the pool {len(pool)}")
    target_frames, target_info = _frames_and_file(target, "target")
    existing_frames, _ = _frames_and_file(existing, "existing")
    # by default every criterion but the two that say nothing of the model: random, and quests'
    # entropy (an optional package, compiled on first use); either is scored when asked for
    names = [c for c in CRITERIA if c not in ("random", "quests")] if criteria is None else list(criteria)
    shared = {}
    if existing_frames is not None:
        shared["existing"] = existing_rows(model, existing_frames)
    if target_frames is not None:
        shared["target"] = target_rows(model, target_frames)
    if any(c in ("fps", "cur") for c in names):
        shared["vectors"] = mean_pooled_descriptors(pool.frames, model.soap)
    if "quests" in names:
        shared["frames"] = pool.frames
    values = {}
    for name in names:
        crit = make_criterion(name, lenient=True, **shared).initialize(model, fixed=indices, seed=seed)
        values[name] = float(crit.value())
    out = {
        "frames": indices, "n_frames": len(indices), "n_atoms": int(sum(len(pool.frames[i]) for i in indices)),
        "M": model.M, "target": target_info if target_info is not None else "pool",
        "existing": None if existing_frames is None else len(existing_frames), "criteria": values,
    }
    if "i" in values:
        out["mean_target_variance"] = -values["i"]
    if "g" in values:
        out["max_target_variance"] = -values["g"]
    return out


def model_from_record(record: DesignRecord | str | Path, pool, *, progress: Progress = NULL_PROGRESS) -> InformationModel:
    """Rebuild the information model a record was computed on (same sparse points)."""
    if not isinstance(record, DesignRecord):
        record = read_record(record)
    pool = as_pool(pool)
    check_pool_matches(record, pool)
    return model_for(pool, ModelConfig.from_record(record), sparse_locations=record.sparse_points, progress=progress)


def check_pool_matches(record: DesignRecord, pool: Pool) -> None:
    """Refuse a pool whose files differ from the record's (by sha256 and frame count)."""
    theirs = [(p.get("n_frames"), p.get("sha256")) for p in record.pool]
    ours = [(f.n_frames, f.sha256) for f in pool.files]
    if theirs != ours:
        raise InputError("the pool files do not match the design record (different sha256 or frame counts)")


def verify_record(record, pool, *, rtol: float = 1e-6) -> dict:
    """Recompute the recorded criterion value of fixed + selected and compare.

    ``d``/``random`` without existing frames: log det F̃ from scratch (slogdet). Other
    criteria, or records with an ``existing`` training set (read again from its path,
    which must still exist): the value of a criterion state built from the frames
    (:func:`score`). Returns ``{"recorded", "recomputed", "ok"}``.
    """
    if not isinstance(record, DesignRecord):
        record = read_record(record)
    pool = as_pool(pool)
    for what in ("fixed", "selected"):
        for item in getattr(record, what):
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                raise InputError(f"the record's {what} frames must be pool indices (whole numbers), got {item!r}")
            if not 0 <= int(item) < len(pool):
                raise InputError(f"the record's {what} frame index {int(item)} is outside the pool "
                                 f"({len(pool)} frames)")
    chosen = [int(i) for i in list(record.fixed) + list(record.selected)]
    if len(set(chosen)) != len(chosen):
        raise InputError("the record lists a pool frame twice in fixed + selected")
    model = model_from_record(record, pool)
    if record.criterion not in CRITERIA:
        raise ConfigurationError(f"verify: unknown criterion {record.criterion!r}")
    name = "d" if record.criterion == "random" else record.criterion
    existing = record.extras.get("existing")
    target = record.extras.get("target")
    if existing is not None and not Path(str(existing.get("path", ""))).is_file():
        raise InputError(f"verify needs the existing training set {existing.get('path')!r} the record was made with")
    if target is not None and name in ("i", "g") and not Path(str(target.get("path", ""))).is_file():
        raise InputError(f"verify needs the target file {target.get('path')!r} the record was made with")
    if name == "d" and existing is None:
        value = model.d_value(list(record.fixed) + list(record.selected))
    else:
        value = score(pool, design=record, model=model, criteria=[name],
                      target=target.get("path") if target is not None and name in ("i", "g") else None,
                      existing=existing.get("path") if existing is not None else None)["criteria"][name]
    ok = bool(np.isclose(value, record.value, rtol=rtol, atol=1e-9 * max(1.0, abs(record.value))
                         if name in ("d", "e", "cur") else 1e-12 * max(1e-300, abs(record.value))))
    return {"recorded": record.value, "recomputed": value, "ok": ok}


def selected_frames(result: SelectionResult) -> list[Atoms]:
    """Copies of the selected frames carrying everything the pool frame had.

    ``info`` and ``arrays`` are copied, and so are the calculator results (energy,
    forces, stress, … of a labelled pool, e.g. read from extxyz or OUTCAR) on a
    :class:`~ase.calculators.singlepoint.SinglePointCalculator`, so ``mlipdoe fit`` can
    read the labels of the written file. ``info`` gains ``mlipdoe_rank`` (1-based),
    ``mlipdoe_gain`` and ``pool_index``.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for rank, (index, gain) in enumerate(zip(result.selected, result.gains), start=1):
        frame = result.pool.frames[index]
        atoms = frame.copy()
        results = getattr(frame.calc, "results", None) if frame.calc is not None else None
        if results:
            copied = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in results.items()}
            atoms.calc = SinglePointCalculator(atoms, **copied)
        atoms.info["mlipdoe_rank"] = rank
        atoms.info["mlipdoe_gain"] = float(gain)
        atoms.info["pool_index"] = int(index)
        out.append(atoms)
    return out
