"""The protocol every criterion implements. Optimizers only see this.

Also the two inputs several criteria share: rows of frames *outside* the pool that are
already in the training set (:class:`ExistingRows`, augmentation) and the target set of
the I/G criteria (:class:`TargetRows`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..exceptions import InputError


def is_rank_one(model) -> bool:
    """True when every pool frame adds one row (energy-only model): fast paths apply."""
    return getattr(model, "factors", None) is None and tuple(model.observations) == ("energy",)


@dataclass
class ExistingRows:
    """Frames already computed (a training set outside the pool).

    They enter F̃ first through their factors and are never removed.

    Attributes
    ----------
    factors : list of (r_e × M) arrays
        The blocks they add to F̃ (energy-only: ψ_e / (σ_E √n_e)).
    psi : (E, M) array
        Whitened energy rows (used by ``maximin``).
    n_atoms : (E,) array
    frames : list of ase.Atoms, optional
        The frames themselves (used by the descriptor baselines ``fps``/``cur``).
    """

    factors: list
    psi: np.ndarray
    n_atoms: np.ndarray
    frames: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.factors)


@dataclass
class TargetRows:
    """Where the potential will be used: whitened energy rows and atom counts.

    Attributes
    ----------
    psi : (T, M) array
    n_atoms : (T,) array
    """

    psi: np.ndarray
    n_atoms: np.ndarray

    def __len__(self) -> int:
        return len(self.psi)


def existing_rows(model, frames) -> ExistingRows:
    """:class:`ExistingRows` of frames outside the pool (species must be covered).

    Uses the model's observations: energy-only models give one scaled energy row per
    frame; models with forces/virials give each frame's compressed factor.
    """
    frames = list(frames)
    if not frames:
        raise InputError("the existing training set is empty")
    psi = model.rows_for(frames)  # raises InputError for uncovered species
    n_atoms = np.array([len(a) for a in frames], dtype=np.int64)
    cts = [a.info.get("config_type") for a in frames]
    if is_rank_one(model):
        scale = 1.0 / np.sqrt(model.frame_energy_variance(frames, cts))
        factors = [psi[k : k + 1] * scale[k] for k in range(len(frames))]
    else:
        rows = model.observation_rows(frames, config_types=cts)
        factors = [r.compressed() for r in rows]
    return ExistingRows(factors=factors, psi=psi, n_atoms=n_atoms, frames=frames)


def target_rows(model, frames=None) -> TargetRows:
    """Target rows: the pool's own rows (``frames=None``) or rows of separate frames.

    Raises
    ------
    InputError
        If a target frame contains a species the sparse points do not cover.
    """
    if frames is None:
        return TargetRows(psi=model.psi, n_atoms=np.asarray(model.n_atoms))
    frames = list(frames)
    if not frames:
        raise InputError("the target set is empty")
    return TargetRows(psi=model.rows_for(frames), n_atoms=np.array([len(a) for a in frames], dtype=np.int64))


class Criterion(ABC):
    """A design criterion with incremental state; values are always maximised.

    Life cycle: ``initialize(model, fixed=...)`` puts the fixed frames (and any
    ``existing`` rows given to the constructor) into the state; then
    ``gains(candidates)`` scores additions without changing the state, and
    ``add``/``remove`` change it and return the realised change of ``value()``.

    Optimizers may also use :meth:`snapshot`/:meth:`restore` (undo a trial move),
    :meth:`reset` (back to the fixed frames only), :meth:`refresh` (rebuild the state
    from scratch, against round-off drift), :meth:`prepare_removals` (before trial
    removals) and :meth:`tie_break` (a secondary score for exactly tied gains).
    """

    name: str = ""
    #: True when the gains can only shrink as the design grows (lazy greedy is exact).
    submodular: bool = False
    #: Attributes that change with the design (copied by :meth:`snapshot`).
    _state_attrs: tuple[str, ...] = ("members",)

    def __init__(self):
        self.members: list[int] = []

    @abstractmethod
    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "Criterion":
        """Reset the state to the information of ``fixed`` frames; returns self."""

    @abstractmethod
    def gains(self, candidates: np.ndarray) -> np.ndarray:
        """Increase of ``value()`` if each candidate were added (state unchanged)."""

    @abstractmethod
    def add(self, index: int) -> float:
        """Add a frame; returns the change of ``value()``."""

    @abstractmethod
    def remove(self, index: int) -> float:
        """Remove a non-fixed member; returns the change of ``value()`` (≤ 0 for d)."""

    @abstractmethod
    def value(self) -> float:
        """Current criterion value."""

    # -- optional hooks used by the optimizers (generic defaults) -------------
    def tie_break(self, candidates: np.ndarray) -> np.ndarray | None:
        """Secondary score (larger wins) among candidates with tied gains, or None."""
        return None

    def prepare_removals(self) -> None:
        """Called before a series of trial removals (each undone with :meth:`restore`)."""

    def snapshot(self) -> dict:
        """Copy of the design-dependent state (see :meth:`restore`)."""
        out = {}
        for name in self._state_attrs:
            value = getattr(self, name, None)
            if hasattr(value, "copy"):
                value = value.copy()
            else:
                value = copy.copy(value)
            out[name] = value
        return out

    def restore(self, snap: dict) -> None:
        """Put back a state taken by :meth:`snapshot` (the snapshot stays reusable)."""
        for name, value in snap.items():
            setattr(self, name, value.copy() if hasattr(value, "copy") else copy.copy(value))

    def reset(self) -> "Criterion":
        """Back to the state right after :meth:`initialize` (fixed frames only)."""
        return self.initialize(self.model, fixed=self.fixed, seed=getattr(self, "seed", 0))

    def refresh(self) -> "Criterion":
        """Rebuild the state from scratch with the same members (removes round-off drift)."""
        members = list(self.members)
        self.reset()
        for m in members:
            self.add(m)
        return self

    def _remove_by_rebuild(self, index: int) -> float:
        """``remove`` for criteria whose state is rebuilt from the members (``_rebuild``)."""
        index = self._check_member(index)
        before = self.value()
        self.members.remove(index)
        self._rebuild()
        return self.value() - before

    def _check_member(self, index: int) -> int:
        index = int(index)
        if index not in self.members:
            raise ValueError(f"frame {index} is not a removable member")
        return index


class InformationCriterion(Criterion):
    """Shared set-up of the criteria that are functions of F̃(S) (d, a, i, g, e).

    Constructor option ``existing`` (:class:`ExistingRows`): frames outside the pool
    that enter F̃ before the fixed pool frames and are never removed.

    The numerics of adding and removing a frame, stability included, belong to
    :class:`~mlipdoe.state.InformationState`: ``_update`` of each criterion applies the
    block to the state and derives its own change from what ``state.update`` returns
    (U = C_out Wᵀ, K = (I + W U)⁻¹ with C_with = C_out − U K Uᵀ), never from I − W C Wᵀ.
    """

    _state_attrs = ("members", "state")

    def __init__(self, *, existing: ExistingRows | None = None):
        super().__init__()
        self.existing = existing

    def _init_state(self, model, fixed: Sequence[int], seed: int) -> None:
        from ..state import InformationState

        self.model = model
        self.seed = int(seed)
        self.state = InformationState(model.M)
        self.members = []
        self.fixed = [int(f) for f in fixed]
        self._rank_one = is_rank_one(model)
        if self.existing is not None:
            for W in self.existing.factors:
                self.state.update(np.atleast_2d(W), +1)
        for f in self.fixed:
            self.state.update(model.factor(f), +1)

    def _update(self, index: int, sign: int) -> float:
        """Add (+1) or remove (−1) frame ``index`` from the state; returns Δ value."""
        raise NotImplementedError

    def add(self, index: int) -> float:
        delta = self._update(int(index), +1)
        self.members.append(int(index))
        return delta

    def remove(self, index: int) -> float:
        """Remove a member through the state's stable downdate (O(M² r), no rebuild)."""
        index = self._check_member(index)
        delta = self._update(index, -1)
        self.members.remove(index)
        return delta

    def prepare_removals(self) -> None:
        """Build the state's Cholesky factor now, so that trial removals undone with
        :meth:`restore` do not each build it again."""
        self.state.factor()


#: Candidates whose factors a gains sweep over block factors holds at once.
BLOCK_BATCH = 1024


def batched(candidates, gains_of) -> np.ndarray:
    """``gains_of(part)`` over ``candidates``, :data:`BLOCK_BATCH` at a time: a sweep over a pool
    whose factors are read from disk (:class:`~mlipdoe.store.StoredFactors`) holds one batch."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) <= BLOCK_BATCH:
        return np.asarray(gains_of(candidates), dtype=float)
    return np.concatenate([gains_of(candidates[a : a + BLOCK_BATCH]) for a in range(0, len(candidates), BLOCK_BATCH)])
