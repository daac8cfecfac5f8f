"""Observation rows: the one currency between every model and everything downstream.

A model (:mod:`.gap_featomic`, and any later implementation of the same protocol) turns a
frame s into its *whitened* rows Ψ_s (r_s × M): energy first, then forces atom-major, then
virials (Voigt order xx, yy, zz, yz, xz, xy), with the noise variance of each row:

    energy   σ_E² n_s      force   σ_F²      virial   σ_V² n_s

(gap_fit ``sigma_per_atom=T``, per-``config_type`` overrides through :meth:`Noise.sigma`).
Whitening is Ψ = Φ L⁻ᵀ with K_MM + jitter·I = L Lᵀ (:func:`whiten`); in whitened
coordinates the prior is N(0, I) and the information matrix is F̃ = I + Σ_s W_sᵀ W_s with
W_s = Λ_s^{-1/2} Ψ_s.

Memory strategy (see docs/forces.md): a frame's r = 1 + 3n (+ 6) scaled rows
W_s = Λ_s^{-1/2} Ψ_s are compressed to S V_kᵀ from the thin SVD W_s = U S Vᵀ, keeping the
k ≤ min(r, M) singular values above ``1e-12 · s_max``; (S Vᵀ)ᵀ(S Vᵀ) = W_sᵀ W_s, so every
log-determinant gain is unchanged.

This module is model-independent: compression, labels in row order, the posterior mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg
import threadpoolctl
from ase import Atoms

from ..exceptions import InputError

#: Voigt order of the virial rows.
VIRIAL_COMPONENTS = ("xx", "yy", "zz", "yz", "xz", "xy")
_VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

#: Singular values below this fraction of the largest are dropped by :func:`compress_rows`.
COMPRESSION_RTOL = 1e-12


@dataclass
class ObservationRows:
    """All observation rows of one frame, whitened but not noise-scaled.

    Attributes
    ----------
    psi : (r, M) array
        Whitened rows: energy first, then forces atom-major (atom 0 x, y, z; atom 1 …),
        then virials (xx, yy, zz, yz, xz, xy). The prediction of observation k is
        ``psi[k] @ beta`` with β the posterior mean in whitened coordinates.
    variance : (r,) array
        Noise variance of each row (σ_E² n, σ_F², σ_V² n).
    kind : (r,) array of str
        ``"energy"``, ``"force"`` or ``"virial"``.
    n_atoms : int
    """

    psi: np.ndarray
    variance: np.ndarray
    kind: np.ndarray
    n_atoms: int

    @property
    def scaled(self) -> np.ndarray:
        """W = Λ^{-1/2} Ψ, shape (r, M): the block this frame adds to F̃."""
        return self.psi / np.sqrt(self.variance)[:, None]

    def compressed(self, rtol: float = COMPRESSION_RTOL) -> np.ndarray:
        """Low-rank factor R (k × M) with RᵀR = WᵀW, see :func:`compress_rows`."""
        return compress_rows(self.scaled, rtol=rtol)

    def select(self, kinds: Sequence[str]) -> "ObservationRows":
        """The subset of rows whose kind is in ``kinds`` (order kept)."""
        keep = np.isin(self.kind, list(kinds))
        return ObservationRows(self.psi[keep], self.variance[keep], self.kind[keep], self.n_atoms)

    def labels(self, atoms: Atoms, *, energy_offset: float = 0.0) -> np.ndarray:
        """Observed values y (r,) in the same order, from ``atoms``' calculator or arrays.

        Energy minus ``energy_offset · n`` (e.g. gap_fit ``e0_method=average``); forces
        −∂E/∂r; virial −V σ in Voigt order.
        """
        y = []
        kinds = set(self.kind.tolist())
        if "energy" in kinds:
            y.append([atoms.get_potential_energy() - energy_offset * len(atoms)])
        if "force" in kinds:
            y.append(np.asarray(atoms.get_forces()).reshape(-1))
        if "virial" in kinds:
            stress = np.asarray(atoms.get_stress(voigt=True))  # xx yy zz yz xz xy, eV/Å³
            y.append(-stress * atoms.get_volume())
        return np.concatenate([np.atleast_1d(np.asarray(v, dtype=float)) for v in y])


_blas_controller = None


def _single_blas_thread():
    """Context limiting BLAS to one thread (the controller is built once, ~25 µs per use)."""
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = threadpoolctl.ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def whiten(L: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Ψ = Φ L⁻ᵀ for raw rows Φ (r × M) by a triangular solve (K_MM is never inverted).

    OpenBLAS's multi-threaded dtrsm rounds differently from its single-threaded one (seen
    with OpenBLAS 0.3.31 on 5 right-hand sides), so the solve runs on one BLAS thread:
    the same rows on any machine, in any process (Dask workers start with one thread).
    """
    rows = np.atleast_2d(rows)
    if rows.shape[0] == 0:
        return rows.copy()
    with _single_blas_thread():
        psi = scipy.linalg.solve_triangular(L, rows.T, lower=True, check_finite=False)
    return np.ascontiguousarray(psi.T)


def compress_rows(W: np.ndarray, rtol: float = COMPRESSION_RTOL) -> np.ndarray:
    """Factor R (k × M), k ≤ min(r, M), with RᵀR = WᵀW (thin SVD, tiny singular values dropped).

    W = U S Vᵀ ⇒ WᵀW = V S² Vᵀ = (S Vᵀ)ᵀ (S Vᵀ); singular values below ``rtol · s_max``
    contribute less than rtol² relative to WᵀW and are dropped. Cost O(r M min(r, M)).
    """
    W = np.atleast_2d(W)
    if W.shape[0] == 0:
        return W.copy()
    with _single_blas_thread():  # the same factor in every process, threaded or not (see whiten)
        try:
            _, s, vt = scipy.linalg.svd(W, full_matrices=False, lapack_driver="gesdd", check_finite=False)
        except np.linalg.LinAlgError:  # pragma: no cover - gesdd rarely fails to converge
            _, s, vt = scipy.linalg.svd(W, full_matrices=False, lapack_driver="gesvd", check_finite=False)
    keep = s > rtol * s[0] if s[0] > 0 else np.zeros(len(s), dtype=bool)
    return np.ascontiguousarray(s[keep, None] * vt[keep])


def information_rank(factor: np.ndarray, variance: float, fraction: float) -> int:
    """Leading rows of a compressed factor keeping ``fraction`` of its information.

    ``factor`` is a :func:`compress_rows` output R (k × M, rows S Vᵀ, singular values
    s_j = |row j| descending). With noise variance σ² its information is
    log det(I + RᵀR/σ²) = Σ_j log(1 + s_j²/σ²); the smallest k' whose leading terms hold
    ``fraction`` of that sum is returned (``fraction`` ≥ 1: all k rows).

    The kept share only grows with σ (each term's ratio to a smaller one decreases in
    1/σ²), so a rank chosen at σ keeps at least ``fraction`` for every σ' ≥ σ; and by
    concavity of log det, dropping rows of R loses no more from a larger block
    (the frame's energy row, a design's F̃) than from R alone.
    """
    if len(factor) == 0 or fraction >= 1.0:
        return len(factor)
    terms = np.log1p(np.einsum("ij,ij->i", factor, factor) / variance)
    total = terms.sum()
    if total <= 0:
        return 0
    return min(int(np.searchsorted(np.cumsum(terms), fraction * total)) + 1, len(factor))


def force_moment(rows: ObservationRows) -> np.ndarray:
    """Factor B (k × M) with BᵀB = Ψ_Fᵀ Ψ_F / (3n): mean force variance = tr(B C Bᵀ).

    For a frame t with whitened force rows Ψ_F (3n × M), the mean predictive variance
    of its force components is v_F(t) = tr(Ψ_F C Ψ_Fᵀ) / (3n) = tr(B C Bᵀ), C = F̃⁻¹
    (eV²/Å²). B is compressed like the factors (rank ≤ min(3n, M)).
    """
    f = rows.psi[rows.kind == "force"]
    if len(f) == 0:
        raise InputError("the rows hold no force observations")
    return compress_rows(f / np.sqrt(len(f)))


def posterior_mean(blocks: Sequence[ObservationRows], labels: Sequence[np.ndarray], M: int) -> np.ndarray:
    """β = F̃⁻¹ Σ_s Ψ_sᵀ Λ_s⁻¹ y_s (whitened weights), F̃ = I + Σ Ψ_sᵀ Λ_s⁻¹ Ψ_s.

    Predictions are ``rows.psi @ beta``. Solved by Cholesky of F̃ (eigenvalues ≥ 1).
    """
    F = np.eye(M)
    b = np.zeros(M)
    for rows, y in zip(blocks, labels):
        y = np.asarray(y, dtype=float)
        if y.shape != (len(rows.psi),):
            raise InputError(f"labels have shape {y.shape}, expected ({len(rows.psi)},)")
        W = rows.scaled
        F += W.T @ W
        b += W.T @ (y / np.sqrt(rows.variance))
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(F, lower=True), b)


def mean_force_moment(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """A = mean_t B_tᵀ B_t (M × M): the target-mean force variance is tr(C A).

    For the I criterion with ``--target-observable forces``: value −tr(C A); adding a
    block W with U = C Wᵀ, S = I + W U changes it by + tr(S⁻¹ Uᵀ A U) (Woodbury).
    """
    if len(blocks) == 0:
        raise InputError("no target frames")
    A = sum(B.T @ B for B in blocks)
    return A / len(blocks)
