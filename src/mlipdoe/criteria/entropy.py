"""Model-free information-entropy baseline: QUESTS minimum-set-cover compression.

The descriptor, the kernel density estimate and the entropies are those of the ``quests``
package (``pip install 'mlipdoe[baselines]'``):

- D. Schwalbe-Koda, S. Hamel, B. Sadigh, F. Zhou, V. Lordi, "Model-free quantification of
  completeness, uncertainties, and outliers in atomistic machine learning using
  information theory", arXiv:2404.12367 — the descriptor, H and δH;
- B. Yu, V. Lordi, D. Schwalbe-Koda, "Maximizing efficiency of dataset compression for
  machine learning potentials with information theory", arXiv:2511.10561 — the greedy
  minimum-set-cover (MSC) selection, ``quests.compression.fps.msc`` /
  ``msc_conditional`` (the default method of ``quests compress``).

Only positions, cell and periodicity enter (``quests.descriptor.get_descriptors``); no
label, no information model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..exceptions import ConfigurationError, InputError
from .base import Criterion, ExistingRows

#: Smallest positive double: a kernel sum that underflows to 0 is read as this value, so
#: δH ≤ −log(5e-324) ≈ 744.4 stays finite (quests itself would return +inf).
SMALLEST_DENSITY = float(np.nextafter(0.0, 1.0))


def _quests():
    """The ``quests.descriptor`` and ``quests.entropy`` modules, or a ConfigurationError."""
    try:
        import quests.descriptor
        import quests.entropy
    except ImportError as err:
        raise ConfigurationError(
            "criterion 'quests' needs the quests package: pip install 'mlipdoe[baselines]'") from err
    return quests.descriptor, quests.entropy


def quests_descriptors(frames, *, k: int | None = None, cutoff: float | None = None) -> list[np.ndarray]:
    """QUESTS descriptors of every atomic environment, one array per frame.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Positions, cell and ``pbc`` are used (frames not periodic in all three directions
        are treated as isolated, as ``quests.descriptor.get_descriptors`` does); species,
        energies and forces are not.
    k : int, optional
        Nearest neighbours per environment (default ``quests.descriptor.DEFAULT_K`` = 32).
    cutoff : float, optional
        Cutoff of the neighbour weights in Å (default ``DEFAULT_CUTOFF`` = 5.0).

    Returns
    -------
    list of (n_s, 2k − 1) arrays
        Row i of entry s: the sorted inverse neighbour distances and mean inverse
        neighbour–neighbour distances of atom i of frame s.
    """
    descriptor, _ = _quests()
    k = descriptor.DEFAULT_K if k is None else k
    cutoff = descriptor.DEFAULT_CUTOFF if cutoff is None else cutoff
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ConfigurationError(f"quests: k must be a whole number ≥ 2, got {k!r}")
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ConfigurationError(f"quests: cutoff must be a positive number of Å, got {cutoff!r}")
    frames = list(frames)
    if any(len(a) == 0 for a in frames):
        raise InputError("quests: a frame has no atoms")
    if not frames:
        return []
    X = descriptor.get_descriptors(frames, k=int(k), cutoff=float(cutoff))
    return np.split(X, np.cumsum([len(a) for a in frames])[:-1])


class QuestsEntropy(Criterion):
    """``quests``: greedy QUESTS minimum-set-cover (MSC) selection of whole frames.

    Every atomic environment e has a QUESTS descriptor x_e; with the Gaussian kernel
    k(x, y) = exp(−‖x − y‖² / 2h²) (bandwidth h, default 0.015) and S the environments of
    the design (existing, fixed and selected frames):

    - value: the information entropy of the design, H(S) = −(1/|S|) Σ_{e∈S} log(p_e / |S|),
      p_e = Σ_{e'∈S} k(x_e, x_e') (``quests.entropy.entropy``; nats; 0 for an empty design);
    - gain of a candidate frame c (what greedy maximises; *not* the change of H):
      max_{e∈c} δH(e | S) + H(c), with δH(e | S) = −log Σ_{e'∈S} k(x_e, x_e')
      (``quests.entropy.delta_entropy``) — the novelty of the frame's most novel
      environment plus the frame's own entropy, the score of ``quests.compression.fps.msc``
      (``msc_conditional`` with existing or fixed frames). A kernel sum that underflows to
      0 counts as 5e-324 (δH ≈ 744.4), so on an empty design every frame has the same δH
      and the first pick is the frame of largest H(c), as in ``msc``.

    ``add`` returns the change of H(S). Greedy on this criterion reproduces ``msc``'s
    picks (ties to the lowest index, within the optimizers' relative tie tolerance). The
    gains never grow as the design grows (kernel sums only grow), so lazy greedy is exact
    (``submodular``), although H(S) itself is not submodular. Deterministic; the seed is
    not used. Descriptors ignore the species (``quests.descriptor.get_descriptors``).

    Incremental update: keep the kernel sum K_e = Σ_{e'∈S} k(x_e, x_e') of every pool
    environment (and of the existing ones); adding frame i adds
    ``quests.entropy.kernel_sum(X_pool, X_i)``, O(N_env n_i D) for N_env pool
    environments of dimension D = 2k − 1; the frame scores are then one segment minimum,
    O(N_env). Gains cost O(1) per candidate. Set-up: the descriptors (O(N_env k²)) and
    each frame's H(c) (O(Σ n_c² D)). Removing rebuilds K from the remaining design
    (O(N_env |S| D)).

    Options (keyword-only): ``frames`` (the pool) or ``descriptors`` (one (n_s, D) array
    per pool frame, e.g. from :func:`quests_descriptors`); ``bandwidth`` h, ``k`` and
    ``cutoff`` (quests' defaults 0.015, 32, 5.0 Å); ``existing`` (its ``frames``) or
    ``existing_descriptors`` for frames outside the pool already in the training set.
    """

    name = "quests"
    submodular = True
    _state_attrs = ("members", "_kernel", "_kernel_existing", "_score", "_value")

    def __init__(self, *, frames=None, descriptors=None, bandwidth: float | None = None, k: int | None = None,
                 cutoff: float | None = None, existing: ExistingRows | None = None, existing_descriptors=None):
        super().__init__()
        self.frames = frames
        self.descriptors = descriptors
        self.bandwidth = bandwidth
        self.k = k
        self.cutoff = cutoff
        self.existing = existing
        self.existing_descriptors = existing_descriptors

    # -- set-up -----------------------------------------------------------------
    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "QuestsEntropy":
        self.model = model
        self.seed = int(seed)
        self.fixed = [int(f) for f in fixed]
        self.members = []
        if getattr(self, "_X", None) is None:
            self._prepare()
        if len(self._n_atoms) != model.n_frames:
            raise ConfigurationError(
                f"criterion 'quests': {len(self._n_atoms)} descriptor frames for a pool of {model.n_frames} frames")
        self._rebuild()
        return self

    def _prepare(self) -> None:
        """Resolve the options: descriptors, frame entropies H(c), bandwidth."""
        _, entropy = _quests()
        h = entropy.DEFAULT_BANDWIDTH if self.bandwidth is None else self.bandwidth
        if isinstance(h, bool) or not isinstance(h, (int, float, np.floating)) or not np.isfinite(h) or h <= 0:
            raise ConfigurationError(f"criterion 'quests': bandwidth must be a positive number, got {h!r}")
        self.bandwidth_ = float(h)
        pool = self._descriptor_list(self.descriptors, self.frames, "pool")
        if pool is None:
            raise ConfigurationError("criterion 'quests' needs the pool frames or their QUESTS descriptors")
        extra = self._descriptor_list(self.existing_descriptors, None, "existing")
        if extra is None and self.existing is not None and len(self.existing):
            if not self.existing.frames:
                raise ConfigurationError("criterion 'quests' needs the existing training set's frames "
                                         "(ExistingRows.frames) or existing_descriptors")
            extra = self._descriptor_list(None, self.existing.frames, "existing")
        dims = {x.shape[1] for x in pool + (extra or [])}
        if len(dims) != 1:
            raise ConfigurationError(f"criterion 'quests': descriptors of different widths {sorted(dims)}")
        self._n_atoms = np.array([len(x) for x in pool], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._n_atoms)])
        self._X = np.ascontiguousarray(np.vstack(pool))
        self._X_existing = np.ascontiguousarray(np.vstack(extra)) if extra else np.empty((0, self._X.shape[1]))
        self.frame_entropy_ = np.array([entropy.entropy(x, h=self.bandwidth_) for x in pool])

    def _descriptor_list(self, given, frames, what: str) -> list[np.ndarray] | None:
        if given is None and frames is None:
            return None
        if given is None:
            given = quests_descriptors(frames, k=self.k, cutoff=self.cutoff)
        out = [np.ascontiguousarray(x, dtype=np.float64) for x in given]
        if any(x.ndim != 2 or len(x) == 0 for x in out):
            raise ConfigurationError(f"criterion 'quests': every {what} frame needs an (n_atoms, D) descriptor array")
        return out

    def _frame(self, index: int) -> np.ndarray:
        return self._X[self._offsets[index] : self._offsets[index + 1]]

    def _rebuild(self) -> None:
        design = self.fixed + self.members
        ref = np.vstack([self._X_existing] + [self._frame(s) for s in design])
        self._kernel = np.zeros(len(self._X))
        self._kernel_existing = np.zeros(len(self._X_existing))
        self._accumulate(ref)

    def _accumulate(self, Y: np.ndarray) -> None:
        """Add the kernel sums towards environments ``Y`` (m, D); refresh scores and value."""
        _, entropy = _quests()
        if len(Y):
            self._kernel += entropy.kernel_sum(self._X, Y, h=self.bandwidth_)
            if len(self._X_existing):
                self._kernel_existing += entropy.kernel_sum(self._X_existing, Y, h=self.bandwidth_)
        k_min = np.minimum.reduceat(self._kernel, self._offsets[:-1])
        self._score = -np.log(np.maximum(k_min, SMALLEST_DENSITY)) + self.frame_entropy_
        in_design = np.zeros(len(self._n_atoms), dtype=bool)
        in_design[self.fixed + self.members] = True
        p = np.concatenate([self._kernel_existing, self._kernel[np.repeat(in_design, self._n_atoms)]])
        self._value = float(-np.mean(np.log(p / len(p)))) if len(p) else 0.0

    # -- protocol ---------------------------------------------------------------
    def gains(self, candidates: np.ndarray) -> np.ndarray:
        return self._score[np.asarray(candidates, dtype=np.int64)]

    def add(self, index: int) -> float:
        index = int(index)
        before = self._value
        self.members.append(index)
        self._accumulate(self._frame(index))
        return self._value - before

    remove = Criterion._remove_by_rebuild

    def value(self) -> float:
        return self._value
