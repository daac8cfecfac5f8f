"""The model protocol: what every information model provides, and all that downstream code uses.

One implementation exists today, :class:`~mlipdoe.model.gap_featomic.InformationModel`
(featomic SOAP + dot-product kernel + sparse points). A gap_fit model with several
descriptors, or a model linear in its parameters (SNAP, ACE, per-atom features), is a new
implementation of the same two halves:

- **rows of any frames** (:class:`RowModel`): per frame the whitened observation rows
  Ψ_s (energy, forces, virials) with their noise, as :class:`~mlipdoe.model.rows.ObservationRows`;
  local rows per atom; the prior's factor L (K_MM + jitter·I = L Lᵀ, or the ridge prior of a
  linear model) and the jitter used;
- **the pool's information** (:class:`PoolModel`): each pool frame's factor W_s with
  W_sᵀW_s = Ψ_sᵀ Λ_s⁻¹ Ψ_s, which the information state, the criteria and the optimizers
  consume, and nothing else.

The store, the built-in fit, assessment and grading need only these methods; a test checks
that the implementation provides them (``tests/test_model_gap_featomic.py``).
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
from ase import Atoms

from .rows import ObservationRows


@runtime_checkable
class RowModel(Protocol):
    """Whitened rows of any frames under one model."""

    #: Lower-triangular factor of the prior precision's inverse: Ψ = Φ L⁻ᵀ.
    L: np.ndarray
    #: Absolute jitter added to the diagonal of K_MM.
    jitter: float
    #: The observed kinds of the pool's information: ("energy",), ("energy", "forces"), …
    observations: tuple

    @property
    def M(self) -> int:
        """Number of model weights (sparse points, or basis functions)."""

    def iter_observation_rows(self, frames: Sequence[Atoms], *, observations: Sequence[str] | None = None,
                              config_types: Sequence | None = None,
                              progress=None) -> Iterator[tuple[int, ObservationRows]]:
        """``(index, rows)`` of every frame, streamed (bounded memory)."""

    def observation_rows(self, frames: Sequence[Atoms], *, observations: Sequence[str] | None = None,
                         config_types: Sequence | None = None) -> list[ObservationRows]:
        """The rows of every frame, in order."""

    def rows_for(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Whitened energy rows (len(frames), M)."""

    def local_rows(self, frames: Sequence[Atoms]) -> list[np.ndarray]:
        """Whitened per-atom rows, (n_atoms, M) per frame; they sum to the energy row."""


@runtime_checkable
class PoolModel(RowModel, Protocol):
    """A :class:`RowModel` with the information of every pool frame precomputed."""

    #: Whitened energy rows of the pool (N, M).
    psi: np.ndarray
    #: Atoms per pool frame (N,).
    n_atoms: np.ndarray

    @property
    def n_frames(self) -> int:
        """N, the pool size."""

    def factor(self, index: int) -> np.ndarray:
        """W_s of pool frame ``index`` (r_s × M): the block it adds to F̃ = I + Σ W_sᵀW_s."""

    def information(self, frames: Sequence[int]) -> np.ndarray:
        """F̃(S) from scratch (M × M)."""
