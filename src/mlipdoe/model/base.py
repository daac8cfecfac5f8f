"""The model protocol: what every information model provides, and all that downstream code uses.

Implementations: :class:`~mlipdoe.model.gap_featomic.InformationModel` (featomic SOAP +
dot-product kernel + sparse points) and :class:`~mlipdoe.model.gap_quippy.GapExactModel`
(a gap_fit command line: several descriptors on GAP's own quippy descriptors). A model
linear in its parameters (SNAP, ACE, per-atom features) is one more implementation of the
same two halves:

- **rows of any frames** (:class:`RowModel`): per frame the whitened observation rows
  Ψ_s (energy, forces, virials) with their noise, as :class:`~mlipdoe.model.rows.ObservationRows`;
  local rows per atom; the prior's factor L (K_MM + jitter·I = L Lᵀ, or the ridge prior of a
  linear model) and the jitter used;
- **the pool's information** (:class:`PoolModel`): each pool frame's factor W_s with
  W_sᵀW_s = Ψ_sᵀ Λ_s⁻¹ Ψ_s, which the information state, the criteria and the optimizers
  consume, and nothing else.

The store, the built-in fit, assessment and grading need only these methods; a test checks
that the implementation provides them (``tests/test_model_gap_featomic.py``).

:class:`PoolInformation` holds everything that follows from the rows alone (factors, F̃ from
scratch, the pool force moment, predictive variances), so an implementation writes only its
rows: ``iter_observation_rows``, ``rows_for`` and ``local_rows``.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
from ase import Atoms

from ..exceptions import InputError
from .rows import ObservationRows, force_moment, whiten


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


class PoolInformation:
    """What every pool model derives from its rows (a mixin of the model dataclasses).

    Needs the attributes ``psi`` (N × M whitened energy rows), ``n_atoms``,
    ``energy_variance``, ``L``, ``noise``, ``observations``, ``factors``, ``config_types``
    and ``pool_force_moment``, and the row methods ``iter_observation_rows``.
    """

    @property
    def n_frames(self) -> int:
        return self.psi.shape[0]

    @property
    def M(self) -> int:
        return self.psi.shape[1]

    @property
    def log_det_K_MM(self) -> float:
        return float(2.0 * np.sum(np.log(np.diag(self.L))))

    @property
    def phi(self) -> np.ndarray:
        """Raw energy rows Φ = Ψ Lᵀ (N, M)."""
        return self.psi @ self.L.T

    @property
    def energy_scale(self) -> np.ndarray:
        """1 / sqrt(σ_E² n_s): turns whitened rows into energy factors."""
        return 1.0 / np.sqrt(self.energy_variance)

    def whiten(self, phi: np.ndarray) -> np.ndarray:
        """Ψ = Φ L⁻ᵀ by a triangular solve (never an inverse)."""
        return whiten(self.L, phi)

    def factor(self, index: int) -> np.ndarray:
        """W_s of pool frame ``index``: the (r_s × M) block it adds to F̃.

        Energy-only: the scaled energy row (1 × M). With forces/virials: the compressed
        factor (k_s × M) with W_sᵀW_s = Ψ_sᵀ Λ_s⁻¹ Ψ_s (energy + force (+ virial) rows).
        """
        if self.factors is not None:
            return self.factors[index]
        return self.psi[index : index + 1] * self.energy_scale[index]

    @property
    def factor_ranks(self) -> np.ndarray:
        """Rows of each frame's factor (N,)."""
        if self.factors is None:
            return np.ones(self.n_frames, dtype=np.int64)
        sizes = getattr(self.factors, "sizes", None)  # factors read from disk know their sizes
        if sizes is not None:
            return np.asarray(sizes, dtype=np.int64)
        return np.array([len(f) for f in self.factors], dtype=np.int64)

    def energy_factors(self, indices=slice(None)) -> np.ndarray:
        return self.psi[indices] * self.energy_scale[indices, None]

    def information(self, frames: Sequence[int]) -> np.ndarray:
        """F̃(S) = I + Σ W_sᵀ W_s from scratch (M × M)."""
        F = np.eye(self.M)
        for s in frames:
            W = self.factor(int(s))
            F += W.T @ W
        return F

    def d_value(self, frames: Sequence[int]) -> float:
        """log det F̃(S) = log det F(S) − log det K_MM, from scratch (slogdet)."""
        sign, logdet = np.linalg.slogdet(self.information(frames))
        return float(logdet)

    def frame_energy_variance(self, frames: Sequence[Atoms], config_types: Sequence | None = None) -> np.ndarray:
        """σ_E² n_s (``sigma_per_atom``) of frames outside the pool, by their config_type."""
        n = np.array([len(a) for a in frames], dtype=np.int64)
        return self.noise.energy_variance(n, config_types)

    def observation_rows(self, frames: Sequence[Atoms], *, observations: Sequence[str] | None = None,
                         config_types: Sequence | None = None) -> list[ObservationRows]:
        """Whitened observation rows of ``frames`` (in or outside the pool).

        Parameters
        ----------
        frames : sequence of ase.Atoms
        observations : tuple of {"energy", "forces", "virials"}, optional
            Default: the model's observations. Energy is always included.
        config_types : sequence, optional
            Per-frame config_type for :meth:`Noise.sigma`; default ``atoms.info["config_type"]``.

        Returns
        -------
        list of ObservationRows
            Per frame: ``psi`` (r × M) whitened rows (energy, forces atom-major x/y/z,
            virials xx yy zz yz xz xy), ``variance`` (r,), ``kind`` (r,). The prediction of
            each observation is ``psi @ beta`` with β = F̃⁻¹ Σ Ψ_sᵀ Λ_s⁻¹ y_s
            (:func:`mlipdoe.model.rows.posterior_mean`).
        """
        out: list = [None] * len(frames)
        for index, rows in self.iter_observation_rows(frames, observations=observations, config_types=config_types):
            out[index] = rows
        return out

    def pool_observation_rows(self, pool_frames: Sequence[Atoms], indices: Sequence[int], *,
                              observations: Sequence[str] | None = None) -> list[ObservationRows]:
        """:meth:`observation_rows` of pool frames by index, with the pool's config_types.

        The pool's rows are not stored (only compressed factors), so they are recomputed
        for the requested frames: cost ∝ their atoms, not the pool's.
        """
        if len(pool_frames) != self.n_frames:
            raise InputError(f"pool_frames has {len(pool_frames)} frames, the model {self.n_frames}")
        indices = [int(i) for i in indices]
        frames = [pool_frames[i] for i in indices]
        cts = [self.config_types[i] for i in indices] if self.config_types is not None else None
        return self.observation_rows(frames, observations=observations, config_types=cts)

    def set_pool_rows(self, rows, *, observations: Sequence[str]) -> None:
        """Take the pool's information from its observation rows: compressed factors + force moment.

        ``rows``: ``(index, ObservationRows)`` of every pool frame (any order), e.g. a stream
        of :meth:`iter_observation_rows` or rows already computed for a fit, so that a pool's
        force rows are computed once. Sets ``factors``, ``pool_force_moment`` and
        ``observations``.
        """
        factors: list = [None] * self.n_frames
        moment = np.zeros((self.M, self.M)) if "forces" in observations else None
        for index, r in rows:
            factors[index] = r.compressed()
            if moment is not None:
                f = r.psi[r.kind == "force"]
                moment += f.T @ f / len(f)
        if any(f is None for f in factors):
            raise InputError(f"rows given for {sum(f is not None for f in factors)} of the {self.n_frames} pool frames")
        self.factors, self.observations = factors, tuple(observations)
        self.pool_force_moment = None if moment is None else moment / self.n_frames

    def compute_pool_rows(self, frames: Sequence[Atoms], *, observations: Sequence[str], config_types=None,
                          progress=None, stage: str = "rows") -> None:
        """Every pool frame's observation rows, computed once: sets ``psi`` and ``energy_variance``
        from each frame's energy row and its variance, and the factors and force moment
        (:meth:`set_pool_rows`). ``psi`` must already have the pool's shape (N × M)."""
        from ..progress import NULL_PROGRESS

        psi = np.zeros_like(self.psi)
        energy_var = np.zeros(len(frames))
        with (progress or NULL_PROGRESS).stage(stage, len(frames)) as advance:
            def stream():
                for index, rows in self.iter_observation_rows(frames, config_types=config_types, progress=advance):
                    psi[index] = rows.psi[0]
                    energy_var[index] = rows.variance[0]
                    yield index, rows

            self.set_pool_rows(stream(), observations=observations)
        self.psi, self.energy_variance = psi, energy_var

    def force_variance_rows(self, frames: Sequence[Atoms]) -> list[np.ndarray]:
        """Per target frame t a factor B_t (k_t × M) with B_tᵀB_t = Ψ_F,tᵀ Ψ_F,t / (3 n_t).

        The mean predictive variance of t's force components (eV²/Å²) under C = F̃⁻¹ is
        v_F(t) = tr(B_t C B_tᵀ) (:meth:`force_variance`); the target mean is tr(C A) with
        A = mean_t B_tᵀ B_t (:func:`mean_force_moment`). Rank k_t ≤ min(3 n_t, M).
        """
        return [force_moment(rows) for _, rows in self.iter_observation_rows(frames, observations=("energy", "forces"))]

    @staticmethod
    def force_variance(C: np.ndarray, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """v_F(t) = tr(B_t C B_tᵀ), mean force-component variance of each target (eV²/Å²)."""
        return np.array([float(np.einsum("ij,jk,ik->", B, C, B)) for B in blocks])

    def predictive_variance(self, C: np.ndarray, psi: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
        """v(t) = ψ_tᵀ F̃⁻¹ ψ_t / n_t² (eV²/atom²) for rows ``psi`` given C = F̃⁻¹."""
        return np.einsum("ij,jk,ik->i", psi, C, psi) / np.asarray(n_atoms, dtype=float) ** 2
