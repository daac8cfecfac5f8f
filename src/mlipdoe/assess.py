"""Assess a training set before DFT: adequacy certificate, informativeness, bias check, grade.

Everything is label-free and computed from the information model of the spec
(``docs/information-model.md``; user guide ``docs/assess.md``) in whitened coordinates
(K_MM = L Lᵀ, Ψ = Φ L⁻ᵀ, F̃(S) = I + Σ_{s∈S} W_sᵀ W_s, C = F̃⁻¹):

- **identifiability** — eigenvalues of F̃ = K_MM^{-1/2} F K_MM^{-1/2} (the whitened
  information, up to an orthogonal change of basis); a direction is *constrained* by the
  data when its eigenvalue exceeds 1 + threshold (data information > threshold × prior).
  K_MM is block diagonal over centre species, so L and the whitened coordinates are too:
  the species ``z`` block is F̃[sl_z, sl_z] with ``sl_z = model.sparse.slices()[z]``
  (the conditional information of that species' weights). Effective number of
  parameters tr(I − K_MM F⁻¹) = tr(I − C) = M − tr C (MacKay 1992, "γ").
- **target adequacy** — per-atom predictive energy std sqrt(v(t)), v(t) = ψ_tᵀ C ψ_t / n_t²,
  on each target set; the set is ADEQUATE for a target when at least ``min_fraction`` of its
  frames have std ≤ ``max_std``.
- **informativeness** — criterion loss when a member is removed (``Criterion.remove``),
  the best one-for-one swap from the pool (one Fedorov 1972 exchange step:
  remove, then the best ``Criterion.gains``), best additions by gain and gain per DFT
  cost n³, design efficiency against the greedy(+exchange) design of the same size.
- **confirmation-bias check** — Nyström configuration kernel
  K(s, s') = ψ_s·ψ_s' / (n_s n_s') (= φ_sᵀ K_MM⁻¹ φ_s' / (n_s n_s')), normalised
  K̂ = K / sqrt(K(s,s) K(s',s')), distance d² = 2 − 2K̂.
- **extrapolation grade** — γ = v(frame) / max_{s∈train} v(s); per atom the local-energy
  variance v_i = ℓ_iᵀ C ℓ_i with the whitened local row ℓ_i = L⁻¹ k(x_i, Z),
  γ_i = v_i / max over training atoms (a GP analogue of pacemaker's D-optimality γ,
  Lysogorskiy et al. 2023).

Frames that are not in the pool (a hand-made training set) enter the model through
their own rows: the model is *extended* by appending them after the pool frames
(:func:`prepare`), so that every criterion can add and remove them like pool frames,
while the pool frames stay the only swap / addition candidates.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import scipy.linalg
from ase import Atoms

from .design import json_ready
from .exceptions import ConfigurationError, InputError
from .hypers import ModelConfig
from .model import InformationModel
from .pool import frame_key
from .progress import NULL_PROGRESS, Progress

REPORT_FORMAT = "mlipdoe.assess/1"
#: Default per-atom energy std threshold (meV/atom): 5 σ_E of the default noise, the usual
#: "a few meV/atom" accuracy target of a GAP energy fit.
DEFAULT_MAX_STD = 5.0
#: Default fraction of target frames that must be below ``max_std``.
DEFAULT_MIN_FRACTION = 0.95
#: Relative removal loss under which a member is redundant (fraction of the mean loss).
REDUNDANT_FRACTION = 0.01
#: Significance level of the bias check (warn when test distances are not significantly larger).
BIAS_ALPHA = 0.05
#: ... or when the median test→train distance is less than this multiple of the median train→train one.
BIAS_MIN_RATIO = 2.0
_MEV = 1000.0
#: Criteria whose add/remove/gains give meaningful losses and swaps.
ASSESS_CRITERIA = ("d", "a", "i", "g", "e", "maximin")


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


@dataclass
class AssessmentSetup:
    """A training set expressed as members of an (extended) information model.

    Attributes
    ----------
    model : InformationModel
        Rows of the ``n_pool`` pool frames, followed by the rows of training frames that
        were given as separate frames (indices ``n_pool ..``).
    n_pool : int
        Number of pool frames (the first rows of ``model``); 0 means "no pool".
    members : list of int
        Model indices of the training frames, in the training order.
    train_frames : list of ase.Atoms
    pool_frames : list of ase.Atoms
        Pool frames (empty without a pool).
    candidates : (n_model,) bool array
        Frames that may be swapped in or added: pool frames not equal to a training frame.
    record : DesignRecord or None
        When the training set came from a design record.
    source : str
        ``"record"``, ``"frames+pool"`` or ``"frames"`` (model built on the training set).
    """

    model: InformationModel
    n_pool: int
    members: list
    train_frames: list
    pool_frames: list
    candidates: np.ndarray
    record: object = None
    source: str = "frames"
    train_labels: list = field(default_factory=list)
    pool_labels: list = field(default_factory=list)


def extend_model(model: InformationModel, frames: Sequence[Atoms]) -> InformationModel:
    """A copy of ``model`` with the rows of ``frames`` appended after its own frames.

    Energy-only models get the whitened energy rows (``model.rows_for``); models with
    forces/virials also get each frame's compressed factor (``observation_rows``).
    """
    frames = list(frames)
    if not frames:
        return model
    psi = model.rows_for(frames)
    n_atoms = np.array([len(a) for a in frames], dtype=np.int64)
    cts = [a.info.get("config_type") for a in frames]
    new = dataclasses.replace(
        model,
        psi=np.ascontiguousarray(np.vstack([model.psi, psi])),
        n_atoms=np.concatenate([model.n_atoms, n_atoms]),
        energy_variance=np.concatenate([model.energy_variance, model.frame_energy_variance(frames, cts)]),
        config_types=(list(model.config_types) + cts) if model.config_types is not None else None,
    )
    if model.factors is not None:
        rows = model.observation_rows(frames, config_types=cts)
        new.factors = list(model.factors) + [r.compressed() for r in rows]
    return new


def prepare(train: Sequence[Atoms] | None = None, *, pool: Sequence[Atoms] | None = None, record=None,
            config: ModelConfig | None = None, pool_labels: Sequence[str] | None = None,
            train_labels: Sequence[str] | None = None, progress: Progress = NULL_PROGRESS) -> AssessmentSetup:
    """Resolve the three ways of naming a training set into an :class:`AssessmentSetup`.

    Parameters
    ----------
    train : list of ase.Atoms, optional
        The training frames. Optional with ``record`` (then fixed + selected are used).
    pool : Pool, list of ase.Atoms or paths, optional
        Candidate pool. Required with ``record``.
    record : DesignRecord or path, optional
        A design record over ``pool``: its sparse points and hypers define the model.
    config : ModelConfig, optional
        The model without a record (default ``ModelConfig()``); refused with a record,
        whose own config is used.

    Without a record the model is built on the pool (or on ``train`` if there is no pool)
    with ``config``. Training frames are always appended to the model as their own
    rows (a training frame equal to a pool frame is removed from the candidates).
    """
    from .api import as_pool, model_for, model_from_record
    from .design import DesignRecord, read_record

    if record is not None and config is not None:
        raise ConfigurationError("a design record defines its own model: give the record or a model config, not both")
    config = ModelConfig() if config is None else config
    if record is not None:
        if pool is None:
            raise InputError("a design record needs its pool: give --pool with the record's pool file(s)")
        if not isinstance(record, DesignRecord):
            record = read_record(record)
        pool_obj = as_pool(pool)
        model = model_from_record(record, pool_obj, progress=progress)
        pool_frames = list(pool_obj.frames)
        pool_labels = pool_labels or [f"{Path(i.source).name}:{i.index_in_file}" for i in pool_obj.info]
        if train is None:
            members = [int(i) for i in list(record.fixed) + list(record.selected)]
            if not members:
                raise InputError("the design record selects no frames")
            cand = np.ones(model.n_frames, dtype=bool)
            cand[members] = False
            return AssessmentSetup(model, len(pool_frames), members, [pool_frames[i] for i in members], pool_frames,
                                   cand, record=record, source="record",
                                   train_labels=[pool_labels[i] for i in members], pool_labels=list(pool_labels))
        source = "frames+record"
    elif pool is not None:
        pool_obj = as_pool(pool)
        pool_frames = list(pool_obj.frames)
        pool_labels = pool_labels or [f"{Path(i.source).name}:{i.index_in_file}" for i in pool_obj.info]
        model = model_for(pool_obj, config, progress=progress)
        source = "frames+pool"
    else:
        if not train:
            raise InputError("nothing to assess: give a training set (--train) or a design record (--record)")
        model = model_for(list(train), config, progress=progress)
        train = list(train)
        return AssessmentSetup(model, 0, list(range(len(train))), train, [], np.zeros(len(train), dtype=bool),
                               source="frames",
                               train_labels=list(train_labels or [f"train:{k}" for k in range(len(train))]))
    train = list(train or [])
    if not train:
        raise InputError("the training set is empty")
    n_pool = len(pool_frames)
    ext = extend_model(model, train)
    keys = {frame_key(a): k for k, a in enumerate(pool_frames)}
    cand = np.zeros(ext.n_frames, dtype=bool)
    cand[:n_pool] = True
    for a in train:
        k = keys.get(frame_key(a))
        if k is not None:
            cand[k] = False
    return AssessmentSetup(ext, n_pool, list(range(n_pool, n_pool + len(train))), train, pool_frames, cand,
                           record=record, source=source,
                           train_labels=list(train_labels or [f"train:{k}" for k in range(len(train))]),
                           pool_labels=list(pool_labels))


# ---------------------------------------------------------------------------
# Maths pieces (each a pure function of the model and a member list)
# ---------------------------------------------------------------------------


def _inverse_information(F: np.ndarray) -> np.ndarray:
    """C = F̃⁻¹ by Cholesky (F̃'s eigenvalues are ≥ 1, so it is well conditioned from below)."""
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(F, lower=True), np.eye(len(F)))


def posterior_covariance(model: InformationModel, members: Sequence[int]) -> np.ndarray:
    """C = F̃(S)⁻¹ from scratch, (M, M)."""
    return _inverse_information(model.information(list(members)))


def summary(values: np.ndarray) -> dict:
    """mean, median, p95, max, min of a 1-D array (empty → None entries)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "p95": None, "max": None, "min": None}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "p95": float(np.percentile(v, 95)), "max": float(v.max()), "min": float(v.min())}


def n_observations(model: InformationModel, members: Sequence[int]) -> int:
    """Scalar observations of the members: 1 energy (+ 3n forces, + 6 virials) per frame."""
    obs = set(model.observations)
    total = 0
    for s in members:
        n = int(model.n_atoms[s])
        total += 1 + (3 * n if "forces" in obs else 0) + (6 if "virials" in obs else 0)
    return total


def identifiability(model: InformationModel, members: Sequence[int], *, threshold: float = 1.0) -> dict:
    """Spectrum of F̃(S) = K_MM^{-1/2} F(S) K_MM^{-1/2} (whitened, all eigenvalues ≥ 1).

    Returns a dict with ``eigenvalues`` (descending), ``n_constrained`` (# > 1 + threshold),
    ``per_species`` (the same on each species' diagonal block of F̃; for a gap_fit model
    ``per_descriptor``, on each descriptor's block), ``condition_number``
    (λ_max / λ_min of F̃), ``effective_parameters`` tr(I − C) = M − tr(F̃⁻¹),
    ``n_observations`` and ``n_frames``.
    """
    F = model.information(list(members))
    evals = np.linalg.eigvalsh(F)[::-1]
    per_species, per_descriptor = [], []
    for key, sl in model.sparse.slices().items():
        ev = np.linalg.eigvalsh(F[sl, sl])[::-1]
        entry = {"M": int(sl.stop - sl.start), "n_constrained": int(np.sum(ev > 1.0 + threshold)),
                 "eigenvalues": ev.tolist()}
        if isinstance(key, str):  # a gap_fit model: one block per (expanded) descriptor
            per_descriptor.append({"descriptor": key, **entry})
        else:
            per_species.append({"species": int(key), **entry})
    C = _inverse_information(F)
    return {
        "threshold": float(threshold),
        "M": int(model.M),
        "eigenvalues": evals.tolist(),
        "n_constrained": int(np.sum(evals > 1.0 + threshold)),
        "per_species": per_species,
        **({"per_descriptor": per_descriptor} if per_descriptor else {}),
        "condition_number": float(evals[0] / evals[-1]),
        "effective_parameters": float(model.M - np.trace(C)),
        "n_observations": n_observations(model, members),
        "n_frames": len(members),
    }


def energy_std(model: InformationModel, C: np.ndarray, psi: np.ndarray, n_atoms) -> np.ndarray:
    """Per-atom predictive energy std sqrt(ψᵀ C ψ) / n in meV/atom, shape (len(psi),)."""
    v = model.predictive_variance(C, psi, np.asarray(n_atoms))
    return np.sqrt(np.maximum(v, 0.0)) * _MEV


def target_adequacy(model: InformationModel, C: np.ndarray, frames: Sequence[Atoms], *, name: str,
                    max_std: float = DEFAULT_MAX_STD, min_fraction: float = DEFAULT_MIN_FRACTION) -> dict:
    """Predictive std statistics of one target set and its pass/fail check.

    The check: fraction of frames with std ≤ ``max_std`` (meV/atom) must be ≥ ``min_fraction``.
    With force observations also the mean force-component std per frame (eV/Å).
    """
    frames = list(frames)
    if not frames:
        raise InputError(f"target set {name!r} is empty")
    psi = model.rows_for(frames)
    n = np.array([len(a) for a in frames])
    std = energy_std(model, C, psi, n)
    stats = summary(std)
    frac = float(np.mean(std <= max_std))
    out = {"name": name, "n_frames": len(frames), "std_meV": std.tolist(), **{k: stats[k] for k in
           ("mean", "median", "p95", "max")}, "fraction_below": frac, "force_std": None}
    if "forces" in model.observations:
        blocks = model.force_variance_rows(frames)
        fstd = np.sqrt(np.maximum(model.force_variance(C, blocks), 0.0))
        out["force_std"] = {"unit": "eV/Å", "values": fstd.tolist(), **summary(fstd)}
    out["passed"] = bool(frac >= min_fraction)
    out["failed_statistic"] = None if out["passed"] else (
        f"fraction of frames with per-atom energy std <= {max_std:g} meV/atom is {frac:.3f} < {min_fraction:g} "
        f"(median {stats['median']:.3g}, p95 {stats['p95']:.3g}, max {stats['max']:.3g} meV/atom)")
    return out


def make_assess_criterion(setup_or_model, criterion: str = "d", n_pool: int | None = None):
    """``make_criterion(criterion)``; the target of ``i``/``g`` is the pool's frames (not the
    appended training frames), or the model's frames when there is no pool."""
    from .criteria import TargetRows, make_criterion

    if isinstance(setup_or_model, AssessmentSetup):
        model, n_pool = setup_or_model.model, setup_or_model.n_pool
    else:
        model = setup_or_model
    target = None
    if n_pool:
        target = TargetRows(psi=model.psi[:n_pool], n_atoms=np.asarray(model.n_atoms[:n_pool]))
    return make_criterion(criterion, lenient=True, target=target)


def _criterion_with(setup, members: Sequence[int], criterion: str = "d"):
    crit = make_assess_criterion(setup, criterion)
    crit.initialize(setup.model if isinstance(setup, AssessmentSetup) else setup)
    for m in members:
        crit.add(int(m))
    return crit


def informativeness(setup: AssessmentSetup, *, criterion: str = "d", redundant_fraction: float = REDUNDANT_FRACTION,
                    state=None) -> dict:
    """Loss on removal and best swap partner of each member.

    loss_s = value(S) − value(S \\ s) (= −``Criterion.remove``); best swap: after removing s,
    the candidate with the largest ``Criterion.gains`` (one Fedorov exchange step); swap gain
    = value(S \\ s ∪ {j}) − value(S) = gain_j − loss_s.

    A member is *redundant* when its loss is below ``redundant_fraction`` × the mean loss,
    or when the other members already predict all its observations to within their noise:
    λ_max(W_s C_{S∖s} W_sᵀ) ≤ 1 (``loo_noise_ratio``; W_s is noise-scaled). C_{S∖s} comes
    from the stable downdate of :class:`~mlipdoe.state.InformationState` (the removal
    itself), not from (I − W_s C W_sᵀ)⁻¹, which is round-off when the member carries nearly
    all the information in some direction (σ_E = 1 meV). With energy rows only the
    condition is v_{S∖s}(s) ≤ σ_E² n_s / n_s², i.e. a ``d`` loss ≤ log 2. An exact duplicate
    of another member always satisfies it (the other copy already measured it once).
    ``loo_std_meV`` is the leave-one-out predictive energy std of the member.

    ``state``: optional criterion already holding exactly the members (reused; every trial
    removal is undone with ``snapshot``/``restore``; the leave-one-out quantities are read
    from its information state when it has one).
    """
    from .state import InformationState

    model, members = setup.model, list(setup.members)
    crit = state if state is not None else _criterion_with(setup, members, criterion)
    value = float(crit.value())
    cand = np.flatnonzero(setup.candidates)
    info = getattr(crit, "state", None)
    own = None
    if not isinstance(info, InformationState):  # e.g. maximin: a plain F̃(S) state for the leave-one-out part
        own = InformationState(model.M)
        for m in members:
            own.update(model.factor(m), +1)
        own.factor()
    crit.prepare_removals()
    rows = []
    for pos, s in enumerate(members):
        W = np.atleast_2d(model.factor(s))
        snap = crit.snapshot()
        loss = -float(crit.remove(s))
        swap = None
        if len(cand):
            g = np.asarray(crit.gains(cand), dtype=float)
            k = int(np.argmax(g))
            swap = {"index": int(cand[k]), "label": _label(setup, int(cand[k])), "gain": float(g[k] - loss)}
        if own is None:
            C_loo = crit.state.C  # F̃(S ∖ s)⁻¹ while s is out
        else:
            trial = own.copy()
            trial.update(W, -1)
            C_loo = trial.C
        psi = model.psi[s]
        n = float(model.n_atoms[s])
        v_loo = float(psi @ C_loo @ psi) / n**2  # leave-one-out predictive variance of its energy per atom
        # the others' predictive variance of this frame's observations in units of their noise
        # (energy-only: v_loo / noise)
        loo_ratio = float(np.max(np.linalg.eigvalsh(W @ C_loo @ W.T)))
        crit.restore(snap)
        noise_v = float(model.energy_variance[s]) / n**2
        rows.append({"position": pos, "index": int(s), "label": _label(setup, s), "n_atoms": int(n), "loss": loss,
                     "loo_std_meV": float(math.sqrt(max(v_loo, 0.0)) * _MEV),
                     "noise_std_meV": float(math.sqrt(noise_v) * _MEV), "loo_noise_ratio": loo_ratio,
                     "best_swap": swap})
    mean_loss = float(np.mean([r["loss"] for r in rows])) if rows else 0.0
    for r in rows:
        reasons = []
        if r["loss"] < redundant_fraction * mean_loss:
            reasons.append(f"loss {r['loss']:.3g} < {redundant_fraction:g} x mean loss {mean_loss:.3g}")
        if r["loo_noise_ratio"] <= 1.0:
            reasons.append(f"the other members predict its observations within their noise (energy: "
                           f"{r['loo_std_meV']:.3g} vs noise {r['noise_std_meV']:.3g} meV/atom)")
        r["redundant"] = bool(reasons)
        r["redundant_reason"] = "; ".join(reasons) if reasons else None
    return {"criterion": criterion, "value": value, "mean_loss": mean_loss, "redundant_fraction": redundant_fraction,
            "n_redundant": int(sum(r["redundant"] for r in rows)), "members": rows}


def best_additions(setup: AssessmentSetup, *, k: int = 10, criterion: str = "d", state=None) -> dict | None:
    """Top-``k`` candidates by criterion gain, with gain per DFT cost (cost ∝ n³, in units of
    the mean training frame's n³). ``state``: optional criterion holding the members (not changed)."""
    cand = np.flatnonzero(setup.candidates)
    if len(cand) == 0:
        return None
    crit = state if state is not None else _criterion_with(setup, setup.members, criterion)
    g = np.asarray(crit.gains(cand), dtype=float)
    order = np.argsort(-g, kind="stable")[: max(int(k), 0)]
    n_train = np.asarray(setup.model.n_atoms)[setup.members].astype(float)
    unit = float(np.mean(n_train**3))
    frames = []
    for j in order:
        idx = int(cand[j])
        n = float(setup.model.n_atoms[idx])
        cost = n**3 / unit
        frames.append({"index": idx, "label": _label(setup, idx), "n_atoms": int(n), "gain": float(g[j]),
                       "cost": cost, "gain_per_cost": float(g[j] / cost)})
    return {"criterion": criterion, "k": len(frames), "cost_unit": "n_atoms^3 / mean training n_atoms^3",
            "frames": frames}


def design_efficiency(setup: AssessmentSetup, *, criterion: str = "d", seed: int = 0) -> dict | None:
    """The set's criterion value relative to a greedy(+exchange) design of the same size.

    Reference: greedy from the pool candidates (pool frames, training frames excluded only
    if they are not pool frames), then Fedorov exchange
    (:func:`mlipdoe.optimizers.exchange`). Efficiency: for ``d`` (det F̃(S) / det F̃(S_ref))^(1/M) (Atkinson & Donev 1992);
    for variance criteria (negative values) value_ref / value; otherwise value / value_ref.
    """
    from . import optimizers

    if setup.n_pool == 0:
        return None
    model, members = setup.model, setup.members
    available = np.zeros(model.n_frames, dtype=bool)
    available[: setup.n_pool] = True
    n = min(len(members), int(available.sum()))
    crit_ref = make_assess_criterion(setup, criterion)
    crit_ref.initialize(model, seed=seed)
    run = optimizers.greedy(crit_ref, n, available=available)
    ex = optimizers.exchange(crit_ref, list(run.selected), available=available, seed=seed)
    selected, ref_value, optimizer, note = [int(i) for i in ex.selected], float(ex.value), "greedy+exchange", None
    value = float(_criterion_with(setup, members, criterion).value())
    if criterion in ("d", "random"):
        eff = math.exp((value - ref_value) / model.M)
        formula = "(det F(S) / det F(S_ref))^(1/M)"
    elif value < 0 and ref_value < 0:
        eff, formula = ref_value / value, "value_ref / value (variances)"
    else:
        eff, formula = (value / ref_value if ref_value else float("nan")), "value / value_ref"
    return {"criterion": criterion, "optimizer": optimizer, "n_frames": n, "value": value, "value_reference": ref_value,
            "efficiency": eff, "formula": formula, "reference_selected": selected,
            "reference_gains": [float(x) for x in run.gains], "note": note}


def nystrom_features(psi: np.ndarray) -> np.ndarray:
    """Unit configuration features u_s = ψ_s / |ψ_s| (the n_s of K(s,s') cancels on normalising)."""
    norms = np.linalg.norm(psi, axis=1)
    return psi / np.where(norms > 0, norms, 1.0)[:, None]


def kernel_distance(psi_a: np.ndarray, psi_b: np.ndarray) -> np.ndarray:
    """d(s, s') = sqrt(2 − 2 K̂(s, s')) with the Nyström configuration kernel, (len(a), len(b))."""
    K = nystrom_features(psi_a) @ nystrom_features(psi_b).T
    return np.sqrt(np.clip(2.0 - 2.0 * K, 0.0, None))


def nearest_distance(psi_a: np.ndarray, psi_b: np.ndarray, *, exclude_self: bool = False,
                     chunk_size: int = 2048) -> np.ndarray:
    """min_b d(a, b) for every row of ``psi_a`` (len(a),), in chunks of ``chunk_size`` rows.

    ``exclude_self``: ``psi_a`` is ``psi_b`` and the pair (k, k) is skipped (nearest *other*).
    """
    ub = nystrom_features(psi_b)
    out = np.empty(len(psi_a))
    for start in range(0, len(psi_a), chunk_size):
        K = nystrom_features(psi_a[start : start + chunk_size]) @ ub.T
        if exclude_self:
            rows = np.arange(len(K))
            K[rows, start + rows] = -np.inf
        out[start : start + len(K)] = np.sqrt(np.clip(2.0 - 2.0 * K.max(axis=1), 0.0, None))
    return out


def bias_check(model: InformationModel, C: np.ndarray, train_psi: np.ndarray, train_n, test_psi: np.ndarray, test_n,
               pool_psi: np.ndarray | None = None, pool_n=None, *, alpha: float = BIAS_ALPHA,
               min_ratio: float = BIAS_MIN_RATIO) -> dict:
    """Does the test set probe anything beyond the training distribution?

    Statistic: a one-sided Mann–Whitney U test (Mann & Whitney 1947) of the test frames'
    kernel distances to their nearest training frame against the training frames' distances
    to their nearest *other* training frame. If a test set came from the same distribution as
    the training set (e.g. a random split of one generator run) the two samples are
    exchangeable. A warning is issued unless the test distances are significantly larger
    (p < ``alpha``) *and* larger by a margin (median test→train distance ≥ ``min_ratio`` ×
    median train→nearest-other-train distance): otherwise the test set sits inside the
    training distribution and cannot reveal transferability problems. Rank-based and
    median-based, so one isolated frame on either side does not decide it; the margin keeps
    random splits (median ratio ≈ 1, occasionally p < 0.05 by chance) on the warning side.

    Also reported: the coverage radius R = max train→nearest-other-train distance and the
    fraction of test frames beyond it, the 95th percentiles of both distributions, the ratio
    of their medians, and the test frames' predictive std against the pool's.
    """
    from scipy.stats import mannwhitneyu

    train_nn = nearest_distance(train_psi, train_psi, exclude_self=True) if len(train_psi) > 1 else np.zeros(0)
    test_nn = nearest_distance(test_psi, train_psi)
    test_std = energy_std(model, C, test_psi, test_n)
    out = {
        "statistic": "one-sided Mann-Whitney U test: test->nearest-train kernel distances greater than "
                     "train->nearest-other-train distances",
        "alpha": float(alpha),
        "min_ratio": float(min_ratio),
        "p_value": None,
        "median_ratio": None,
        "coverage_radius": None,
        "fraction_beyond": None,
        "test_to_train": {"values": test_nn.tolist(), **summary(test_nn)},
        "train_to_train": {"values": train_nn.tolist(), **summary(train_nn)},
        "p95_test_le_p95_train": None,
        "test_std_meV": {"values": test_std.tolist(), **summary(test_std)},
        "pool_std_meV": None,
        "fraction_test_above_pool_median": None,
        "warning": None,
    }
    if pool_psi is not None and len(pool_psi):
        pool_std = energy_std(model, C, pool_psi, pool_n)
        out["pool_std_meV"] = summary(pool_std)
        out["fraction_test_above_pool_median"] = float(np.mean(test_std > np.median(pool_std)))
    if len(train_nn) == 0:
        out["note"] = "one training frame: no train->train distances, no test"
        return out
    radius = float(train_nn.max())
    p = float(mannwhitneyu(test_nn, train_nn, alternative="greater").pvalue)
    med = float(np.median(train_nn))
    out.update(p_value=p, median_ratio=float(np.median(test_nn) / med) if med > 0 else None, coverage_radius=radius,
               fraction_beyond=float(np.mean(test_nn > radius)),
               p95_test_le_p95_train=bool(np.percentile(test_nn, 95) <= np.percentile(train_nn, 95)))
    ratio = out["median_ratio"]
    if p >= alpha or ratio is None or ratio < min_ratio:
        out["warning"] = (f"the test set sits inside the training distribution: its distances to the nearest training "
                          f"frame are not clearly larger than the training frames' distances to each other (one-sided "
                          f"Mann-Whitney U p = {p:.3g}, warn if >= {alpha:g}; median ratio "
                          f"{_fmt_or_none(ratio)}, warn if < {min_ratio:g}); it cannot reveal transferability problems")
    return out


def _fmt_or_none(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _energy_per_atom(atoms: Atoms, where: str, k: int) -> float:
    e = None
    if atoms.calc is not None:
        try:
            e = atoms.get_potential_energy()
        except Exception:
            e = None
    if e is None:
        e = atoms.info.get("energy")
    if e is None:
        raise InputError(f"{where} frame {k} has no energy (no calculator result and no info['energy'])")
    return float(e) / len(atoms)


def calibration(model: InformationModel, C: np.ndarray, labels: Sequence[Atoms], predictions: Sequence[Atoms]) -> dict:
    """Spearman rank correlation between predicted std and |error| of the energy per atom."""
    from scipy.stats import spearmanr

    labels, predictions = list(labels), list(predictions)
    if len(labels) != len(predictions):
        raise InputError(f"--labels has {len(labels)} frames but --predictions has {len(predictions)}")
    if len(labels) < 3:
        raise InputError("calibration needs at least 3 labelled frames")
    for k, (a, b) in enumerate(zip(labels, predictions)):
        if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
            raise InputError(f"frame {k} of --labels and --predictions differ in atoms")
    err = np.array([abs(_energy_per_atom(b, "predictions", k) - _energy_per_atom(a, "labels", k))
                    for k, (a, b) in enumerate(zip(labels, predictions))]) * _MEV
    std = energy_std(model, C, model.rows_for(labels), [len(a) for a in labels])
    rho, p = spearmanr(std, err)
    return {"n_frames": len(labels), "spearman_rho": _finite(rho), "p_value": _finite(p),
            "std_meV": std.tolist(), "abs_error_meV": err.tolist()}


# ---------------------------------------------------------------------------
# Extrapolation grade
# ---------------------------------------------------------------------------


@dataclass
class GradeResult:
    """Extrapolation grades of some frames.

    Attributes
    ----------
    frame_grade : (n_frames,) array
        γ = v(frame) / max_{s∈train} v(s) (per-atom energy variances).
    atom_grades : list of (n_atoms,) arrays
        γ_i = v_i / max over training atoms of the local-energy variance.
    max_train_variance : float
        max_{s∈train} v(s) (eV²/atom²).
    max_train_atom_variance : float
        max over training atoms of v_i (eV²).
    """

    frame_grade: np.ndarray
    atom_grades: list
    max_train_variance: float
    max_train_atom_variance: float


def grade(model: InformationModel, train: Sequence[int], frames: Sequence[Atoms], *,
          train_frames: Sequence[Atoms]) -> GradeResult:
    """Extrapolation grade of ``frames`` w.r.t. the training members ``train`` of ``model``.

    Parameters
    ----------
    model : InformationModel
    train : sequence of int
        Model indices of the training frames (define F̃ and the reference variances).
    frames : list of ase.Atoms
        Frames to grade.
    train_frames : list of ase.Atoms
        The training frames themselves (for the per-atom reference).
    """
    frames = list(frames)
    if not frames:
        raise InputError("no frames to grade")
    C = posterior_covariance(model, train)
    if len(train_frames) != len(train):
        raise InputError(f"{len(train_frames)} training frames given for {len(train)} training indices")
    # reference variances from the same local-row path as the graded frames (same round-off)
    rows_train = model.local_rows(train_frames)
    psi_train = np.array([r.sum(axis=0) for r in rows_train])
    v_train = model.predictive_variance(C, psi_train, np.array([len(a) for a in train_frames]))
    max_v = float(np.max(v_train))
    max_atom = float(max(np.max(np.einsum("ij,jk,ik->i", r, C, r)) for r in rows_train))
    rows = model.local_rows(frames)
    psi = np.array([r.sum(axis=0) for r in rows])
    v = model.predictive_variance(C, psi, np.array([len(a) for a in frames]))
    atom = [np.einsum("ij,jk,ik->i", r, C, r) / max_atom for r in rows]
    return GradeResult(v / max_v, atom, max_v, max_atom)


def graded_frames(frames: Sequence[Atoms], result: GradeResult, *, keep_above: float | None = None,
                  by: str = "frame") -> list[Atoms]:
    """Copies of ``frames`` with ``info["mlipdoe_grade"]`` (frame γ), ``info["mlipdoe_grade_max_atom"]``
    and ``arrays["mlipdoe_grade"]`` (per-atom γ); only those with grade > ``keep_above`` if given
    (``by="frame"``: the frame γ; ``by="atom"``: the largest atom γ)."""
    if by not in ("frame", "atom"):
        raise InputError(f"--keep-by must be frame or atom, got {by!r}")
    out = []
    for k, atoms in enumerate(frames):
        g, ga = float(result.frame_grade[k]), np.asarray(result.atom_grades[k], dtype=float)
        score = g if by == "frame" else float(ga.max())
        if keep_above is not None and not score > keep_above:
            continue
        new = atoms.copy()
        new.calc = None
        new.info["mlipdoe_grade"] = g
        new.info["mlipdoe_grade_max_atom"] = float(ga.max())
        new.info["mlipdoe_index"] = k
        new.arrays["mlipdoe_grade"] = ga
        out.append(new)
    return out


# ---------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------


def _label(setup: AssessmentSetup, index: int) -> str:
    if index < setup.n_pool and setup.pool_labels:
        return setup.pool_labels[index]
    if index in setup.members:
        pos = setup.members.index(index)
        if pos < len(setup.train_labels):
            return setup.train_labels[pos]
    return str(index)


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


def gain_curve(setup: AssessmentSetup, *, criterion: str = "d") -> dict:
    """The design's gain curve: the record's gains when the set came from a record, else the
    greedy order of the training frames themselves (greedy restricted to the members)."""
    from .optimizers import greedy

    rec = setup.record
    if setup.source == "record" and rec is not None and list(rec.gains) and rec.criterion in ("d", "random"):
        base = setup.model.d_value(list(rec.fixed)) if rec.fixed else 0.0
        gains = [float(g) for g in rec.gains]
        return {"source": "record", "order": [int(i) for i in rec.selected], "gains": gains,
                "values": (base + np.cumsum(gains)).tolist()}
    crit = make_assess_criterion(setup, criterion)
    crit.initialize(setup.model)
    mask = np.zeros(setup.model.n_frames, dtype=bool)
    mask[setup.members] = True
    run = greedy(crit, len(setup.members), available=mask)
    return {"source": "greedy order of the training frames", "order": [int(i) for i in run.selected],
            "gains": [float(g) for g in run.gains], "values": [float(v) for v in run.values]}


def assess(setup: AssessmentSetup, *, targets: Mapping[str, Sequence[Atoms]] | None = None,
           test: Sequence[Atoms] | None = None, max_std: float = DEFAULT_MAX_STD,
           min_fraction: float = DEFAULT_MIN_FRACTION, criterion: str = "d", top_k: int = 10,
           threshold: float = 1.0, redundant_fraction: float = REDUNDANT_FRACTION,
           bias_alpha: float = BIAS_ALPHA, bias_min_ratio: float = BIAS_MIN_RATIO,
           labels: Sequence[Atoms] | None = None,
           predictions: Sequence[Atoms] | None = None, seed: int = 0) -> dict:
    """Every number of the assessment report as a JSON-ready dict (schema: mlipdoe/schemas/report.schema.json).

    The verdict is ADEQUATE when every target passes its check, NOT ADEQUATE (with the
    failed statistic of each failing target in ``reason``) otherwise, and NO TARGET when no
    target set was given.
    """
    if not max_std > 0:
        raise InputError(f"--max-std must be > 0 meV/atom, got {max_std}")
    if not 0 < min_fraction <= 1:
        raise InputError(f"--min-fraction must be in (0, 1], got {min_fraction}")
    if criterion not in ASSESS_CRITERIA:
        raise InputError(f"--criterion must be one of {', '.join(ASSESS_CRITERIA)} for an assessment, "
                         f"got {criterion!r}")
    if threshold < 0:
        raise InputError(f"the identifiability threshold must be >= 0, got {threshold}")
    t0 = time.perf_counter()
    model, members = setup.model, setup.members
    C = posterior_covariance(model, members)
    report: dict = {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"source": setup.source, "n_train": len(members), "n_pool": setup.n_pool,
                   "n_candidates": int(setup.candidates.sum()),
                   "targets": [{"name": k, "n_frames": len(v)} for k, v in (targets or {}).items()],
                   "n_test": len(test) if test is not None else None},
        "model": {"M": int(model.M), "species": [int(z) for z in model.sparse.species],
                  "log_det_K_MM": model.log_det_K_MM, "jitter": float(model.jitter),
                  "observations": list(model.observations), "noise": model.noise.to_dict(),
                  **model.record_fields(), "sparse_method": model.sparse_method},
        "criterion": criterion,
    }
    report["identifiability"] = identifiability(model, members, threshold=threshold)
    train_std = energy_std(model, C, model.psi[members], model.n_atoms[members])
    report["train_std_meV"] = {"values": train_std.tolist(), **summary(train_std)}
    if setup.n_pool:
        pool_std = energy_std(model, C, model.psi[: setup.n_pool], model.n_atoms[: setup.n_pool])
        report["pool_std_meV"] = {"values": pool_std.tolist(), **summary(pool_std)}
    else:
        report["pool_std_meV"] = None
    checks = [target_adequacy(model, C, frames, name=name, max_std=max_std, min_fraction=min_fraction)
              for name, frames in (targets or {}).items()]
    if not checks:
        verdict, reason = "NO TARGET", "no target set given (--target): no adequacy verdict"
    elif all(c["passed"] for c in checks):
        verdict = "ADEQUATE"
        reason = "; ".join(f"{c['name']}: {c['fraction_below']:.3f} of frames have std <= {max_std:g} meV/atom "
                           f"(>= {min_fraction:g})" for c in checks)
    else:
        verdict = "NOT ADEQUATE"
        reason = "; ".join(f"{c['name']}: {c['failed_statistic']}" for c in checks if not c["passed"])
    report["adequacy"] = {"max_std_meV": float(max_std), "min_fraction": float(min_fraction), "targets": checks,
                          "verdict": verdict, "reason": reason}
    state = _criterion_with(setup, members, criterion)  # shared: informativeness restores it after each trial
    report["informativeness"] = informativeness(setup, criterion=criterion, redundant_fraction=redundant_fraction,
                                                state=state)
    report["best_additions"] = best_additions(setup, k=top_k, criterion=criterion, state=state)
    report["design_efficiency"] = design_efficiency(setup, criterion=criterion, seed=seed)
    report["gain_curve"] = gain_curve(setup, criterion=criterion)
    if test is not None:
        test = list(test)
        if not test:
            raise InputError("the test set is empty")
        test_psi = model.rows_for(test)
        pool_psi = model.psi[: setup.n_pool] if setup.n_pool else None
        report["bias_check"] = bias_check(model, C, model.psi[members], model.n_atoms[members], test_psi,
                                          np.array([len(a) for a in test]), pool_psi,
                                          model.n_atoms[: setup.n_pool] if setup.n_pool else None,
                                          alpha=bias_alpha, min_ratio=bias_min_ratio)
    else:
        report["bias_check"] = None
    if (labels is None) != (predictions is None):
        raise InputError("calibration needs both --labels and --predictions")
    report["calibration"] = calibration(model, C, labels, predictions) if labels is not None else None
    report["figures"] = {}
    report["timings_s"] = {"assess": round(time.perf_counter() - t0, 6), **{k: round(v, 6) for k, v in
                                                                             model.timings.items()}}
    from .design import versions

    report["versions"] = versions()
    return json_ready(report)


def exit_code(report: Mapping) -> int:
    """0 for ADEQUATE or NO TARGET, 1 for NOT ADEQUATE (2 is left for bad input)."""
    return 1 if report["adequacy"]["verdict"] == "NOT ADEQUATE" else 0


# ---------------------------------------------------------------------------
# Output: figures and report.json
# ---------------------------------------------------------------------------


def _pca_map(setup: AssessmentSetup, target_psi: Mapping[str, np.ndarray], additions: Sequence[int]):
    """2-D kernel PCA of the pool: Nyström features u = ψ/|ψ|, centred, SVD (Schölkopf et al. 1998)."""
    model = setup.model
    base = model.psi[: setup.n_pool] if setup.n_pool else model.psi[setup.members]
    U = nystrom_features(base)
    mean = U.mean(axis=0)
    _, s, vt = np.linalg.svd(U - mean, full_matrices=False)
    P = vt[:2].T if vt.shape[0] >= 2 else np.pad(vt.T, ((0, 0), (0, 2 - vt.shape[0])))
    proj = lambda psi: (nystrom_features(psi) - mean) @ P  # noqa: E731
    return proj(base), proj(model.psi[setup.members]), {k: proj(v) for k, v in target_psi.items()}, \
        proj(model.psi[list(additions)]) if len(additions) else np.zeros((0, 2))


def write_figures(setup: AssessmentSetup, report: dict, directory, *,
                  targets: Mapping[str, Sequence[Atoms]] | None = None) -> dict:
    """Three PNGs (Agg, atomic): std histogram, gain curve, kernel-PCA map. Returns name → file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    directory = Path(directory)
    files = {}
    # 1. histogram of predictive std
    fig, ax = plt.subplots(figsize=(6, 4))
    series = [("train", report["train_std_meV"]["values"])]
    if report.get("pool_std_meV"):
        series.append(("pool", report["pool_std_meV"]["values"]))
    for t in report["adequacy"]["targets"]:
        series.append((f"target {t['name']}", t["std_meV"]))
    allv = np.concatenate([np.asarray(v, dtype=float) for _, v in series])
    allv = allv[allv > 0]
    lo, hi = (allv.min(), allv.max()) if allv.size else (1e-3, 1.0)
    bins = np.geomspace(lo * 0.9, hi * 1.1 + 1e-12, 30)
    for name, v in series:
        ax.hist(np.clip(np.asarray(v, dtype=float), bins[0], bins[-1]), bins=bins, alpha=0.5, label=name)
    ax.axvline(report["adequacy"]["max_std_meV"], color="k", ls="--", lw=1, label="--max-std")
    ax.set_xscale("log")
    ax.set_xlabel("predictive energy std (meV/atom)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    files["std_histogram"] = "std_histogram.png"
    save_figure(fig, directory / files["std_histogram"])
    # 2. gain curve
    fig, ax = plt.subplots(figsize=(6, 4))
    curve = report["gain_curve"]
    ax.plot(range(1, len(curve["values"]) + 1), curve["values"], "o-", label=f"training set ({curve['source']})")
    eff = report.get("design_efficiency")
    if eff and eff.get("reference_gains"):
        ax.plot(range(1, len(eff["reference_gains"]) + 1), np.cumsum(eff["reference_gains"]), "s--",
                label="greedy design from the pool")
        if eff["optimizer"] == "greedy+exchange":
            ax.plot([eff["n_frames"]], [eff["value_reference"]], "k*", ms=12, label="after Fedorov exchange")
    ax.set_xlabel("frames")
    ax.set_ylabel(f"criterion value ({report['criterion']})")
    ax.legend(fontsize=8)
    files["gain_curve"] = "gain_curve.png"
    save_figure(fig, directory / files["gain_curve"])
    # 3. kernel PCA map
    target_psi = {k: setup.model.rows_for(list(v)) for k, v in (targets or {}).items()}
    adds = [f["index"] for f in (report.get("best_additions") or {}).get("frames", [])]
    pool_xy, train_xy, targ_xy, add_xy = _pca_map(setup, target_psi, adds)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(pool_xy[:, 0], pool_xy[:, 1], s=10, c="0.7", label="pool" if setup.n_pool else "train (no pool)")
    for name, xy in targ_xy.items():
        ax.scatter(xy[:, 0], xy[:, 1], s=14, marker="^", label=f"target {name}")
    ax.scatter(train_xy[:, 0], train_xy[:, 1], s=30, c="C3", marker="o", edgecolors="k", label="train")
    if len(add_xy):
        ax.scatter(add_xy[:, 0], add_xy[:, 1], s=60, marker="*", c="C2", edgecolors="k", label="best additions")
    ax.set_xlabel("kernel PC 1")
    ax.set_ylabel("kernel PC 2")
    ax.legend(fontsize=8)
    files["pca_map"] = "pca_map.png"
    save_figure(fig, directory / files["pca_map"])
    return files


def write_report(report: dict, directory) -> Path:
    """Write ``report.json`` atomically into ``directory``; returns its path."""
    from . import schemas
    from .design import atomic_write_text

    path = Path(directory) / "report.json"
    data = json_ready(report)
    schemas.check(data, "report", f"refusing to write {path}")
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
    return path


__all__ = [
    "AssessmentSetup", "GradeResult", "assess", "best_additions", "bias_check", "calibration", "design_efficiency",
    "exit_code", "extend_model", "grade", "graded_frames", "identifiability", "informativeness", "kernel_distance",
    "nearest_distance",
    "nystrom_features", "posterior_covariance", "prepare", "target_adequacy", "write_figures",
    "write_report",
]
