"""A- and I-optimality: linear (trace) functionals of C = F̃⁻¹."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..state import _ger
from .base import InformationCriterion, TargetRows, target_rows

_EPS = np.finfo(float).eps


class _CandidateVectors:
    """Per-frame state of the energy-only trace gains (see :class:`TraceCriterion`).

    Attributes
    ----------
    P : (N, M) array
        Rows p̃_c = Vᵀ C w_c (C w_c in the eigenbasis V of B).
    num : (N,) array
        Σ_i λ_i p̃_ci² = w_cᵀ C B C w_c, from the rows after every update.
    nrm : (N,) array
        |p̃_c|², from the rows after every update.
    peak : (N,) array
        Largest |p̃_c|² since the row was last computed from C.
    q : (N,) array
        w_cᵀ C w_c (rank-one recurrence).
    qerr : (N,) array
        Bound on the rounding the recurrence has added to q since it was last computed from C.
    """

    __slots__ = ("P", "num", "nrm", "peak", "q", "qerr")

    def __init__(self, P, num, nrm, peak, q, qerr):
        self.P, self.num, self.nrm, self.peak, self.q, self.qerr = P, num, nrm, peak, q, qerr

    def copy(self) -> "_CandidateVectors":
        return _CandidateVectors(self.P.copy(), self.num.copy(), self.nrm.copy(), self.peak.copy(), self.q.copy(),
                                 self.qerr.copy())


class TraceCriterion(InformationCriterion):
    """Value −tr(C B) for a fixed positive semi-definite weight matrix B (M × M).

    Gain of adding a block W (r × M): with U = C Wᵀ and K = (I_r + W U)⁻¹,
    C' = C − U K Uᵀ (Woodbury), so Δ = tr(K Uᵀ B U). Removing uses the U, K that
    :meth:`~mlipdoe.state.InformationState.update` returns (U = C_new Wᵀ, from the
    downdated factor) and the opposite sign, so no 1 − leverage division. The value is
    tracked by these increments; C by :class:`~mlipdoe.state.InformationState`
    (O(M² r) per add/remove).

    **Energy-only gains, O(N M) per pick.** gain_c = (w_cᵀ C B C w_c) / (1 + w_cᵀ C w_c).
    With B = V Λ Vᵀ (eigenvectors, once, O(M³)) every pool frame keeps the vector
    p̃_c = Vᵀ C w_c (an N × M array), so the numerator is Σ_i λ_i p̃_ci², a sum of
    non-negative terms computed afresh from the vectors after every update. Adding
    frame w* (u = C w*, κ = 1/(1 + w*ᵀu) from the state) changes C by −κ u uᵀ and every
    row by

        p̃_c ← p̃_c − κ (w̃*ᵀ p̃_c) ũ,   w̃* = Vᵀw*, ũ = Vᵀu,

    one matrix–vector product with the stored rows and one rank-one update of them,
    fused in blocks of rows that stay in cache. The coefficient is taken from the row
    itself (w*ᵀ C w_c = w̃*ᵀ p̃_c), not from w_c: the row is then multiplied by
    I − κ u w*ᵀ, the same map C undergoes, which damps earlier rounding in the
    directions the new frame informs (with w_cᵀu instead, the errors are never damped:
    1e-7 relative after 500 picks at σ_E = 1 meV against ≤ 1e-8 this way). Removing a
    frame is the expansion p̃_c ← p̃_c + K (w_cᵀU) Ũ with the U, K the state returns (no
    cancellation). The denominator keeps q_c = w_cᵀ C w_c by the recurrence
    q_c ← q_c − κ (w̃*ᵀ p̃_c)² (as ``d`` keeps its q), with a running bound on the
    rounding it adds; scalar recurrences for the numerator itself lose every digit
    (q_c reaches 1e6–1e8 with σ_E = 1 meV, and the numerator falls by its square).

    Exact refresh per row: a row is recomputed from C (p̃_c = Vᵀ(C w_c), q_c = w_cᵀ(C w_c),
    the same products as the O(N M²) path) when |p̃_c| has fallen by more than
    :attr:`refresh_shrink` since it was last computed from C (its rounding relative to
    the row is then above ~eps × that factor) or when q_c's rounding bound passes
    :attr:`refresh_rtol` × (1 + q_c). A row can shrink that much only a few times
    (|C w_c| ≥ |w_c| / λ_max(F̃)), so these refreshes cost a few O(N M²) sweeps over a
    whole run, most of them at the first picks. The rows are built from C on the first
    gains after :meth:`initialize` or :meth:`restore` of a state without them.
    Memory N × M floats: pools with N M > :attr:`fast_max_entries` (and factor blocks,
    forces/virials) use the O(N M²) path below.

    **O(N M²) path** (blocks; reference): P = W_c C (k × M), gain_c = (p_c B p_cᵀ) /
    (1 + p_c·w_c) — two k × M × M products per pick and candidate chunk (blocks: O(M² r)
    per candidate).
    """

    chunk_size = 4096
    #: Largest N·M for which the energy-only gains keep their N × M rows (O(N M) per pick).
    fast_max_entries = 100_000_000
    #: Rows per block of the fused per-pick update (blocks of 256 × M stay in L2).
    fast_block = 256
    #: A row is recomputed from C once its norm has fallen by this factor.
    refresh_shrink = 1e3
    #: q_c is recomputed from C once its rounding bound exceeds this × (1 + q_c).
    refresh_rtol = 1e-10
    _state_attrs = ("members", "state", "_value", "_vec")

    def _weight(self, model) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0):
        self.B = self._weight(model)
        self._init_state(model, fixed, seed)
        self._value = -float(np.sum(self.state.C * self.B))
        self._vec = None
        self._fast = self._rank_one and 0 < model.n_frames * model.M <= self.fast_max_entries
        if self._fast:
            lam, V = np.linalg.eigh(0.5 * (self.B + self.B.T))
            self._V = np.ascontiguousarray(V)
            self._lam = np.maximum(lam, 0.0)  # B ⪰ 0: negative eigenvalues are round-off
            self._identity = not self.fixed and self.existing is None  # C = I exactly
        self.n_row_refreshes = 0
        return self

    # -- O(N M²) path -----------------------------------------------------------------
    def _block_gain(self, W: np.ndarray) -> float:
        U = self.state.C @ W.T
        S = np.eye(len(W)) + W @ U
        return float(np.trace(np.linalg.solve(S, U.T @ self.B @ U)))

    def reference_gains(self, candidates: np.ndarray) -> np.ndarray:
        """Gains from C directly (O(M²) per candidate; blocks O(M² r)); state unchanged."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if not self._rank_one:
            return np.array([self._block_gain(np.atleast_2d(self.model.factor(int(c)))) for c in candidates])
        out = np.empty(len(candidates))
        for start in range(0, len(candidates), self.chunk_size):
            chunk = candidates[start : start + self.chunk_size]
            W = self.model.energy_factors(chunk)
            P = W @ self.state.C
            out[start : start + len(chunk)] = np.einsum("ij,ij->i", P @ self.B, P) / (1.0 + np.einsum("ij,ij->i", P, W))
        return out

    # -- O(N M) path ------------------------------------------------------------------
    def _row_norms(self, P: np.ndarray, num: np.ndarray, nrm: np.ndarray) -> None:
        """num = Σ_i λ_i P_ci², nrm = Σ_i P_ci² (into the given arrays)."""
        sq = P * P
        num[:] = sq @ self._lam
        nrm[:] = sq.sum(axis=1)

    def _rows_from_c(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(p̃ rows, q) of pool frames ``rows`` (slice or sorted indices) from the current C."""
        W = self.model.energy_factors(rows)
        X = W if self._identity else W @ self.state.C
        return X @ self._V, np.einsum("ij,ij->i", W, X)

    def _build_vectors(self) -> None:
        N, M = self.model.n_frames, self.model.M
        f = _CandidateVectors(np.empty((N, M)), np.empty(N), np.empty(N), np.empty(N), np.empty(N), np.zeros(N))
        for start in range(0, N, self.chunk_size):
            sl = slice(start, min(N, start + self.chunk_size))
            f.P[sl], f.q[sl] = self._rows_from_c(sl)
            self._row_norms(f.P[sl], f.num[sl], f.nrm[sl])
        f.peak[:] = f.nrm
        self._vec = f

    def _refresh_rows(self, idx: np.ndarray) -> None:
        f = self._vec
        self.n_row_refreshes += len(idx)
        for start in range(0, len(idx), self.chunk_size):
            part = idx[start : start + self.chunk_size]
            P, f.q[part] = self._rows_from_c(part)
            f.P[part] = P
            num, nrm = np.empty(len(part)), np.empty(len(part))
            self._row_norms(P, num, nrm)
            f.num[part], f.nrm[part], f.peak[part], f.qerr[part] = num, nrm, nrm, 0.0

    def _update_vectors(self, w: np.ndarray, u: np.ndarray, kappa: float, sign: int) -> None:
        """Apply C ← C − sign κ u uᵀ (u = C_out w) to every row, q and the error bounds."""
        f, V = self._vec, self._V
        N, M = f.P.shape
        ut = u @ V
        gamma = _EPS * np.sqrt(M)  # relative rounding of a length-M dot product
        z = np.empty(N)
        if sign > 0:  # contraction: coefficient from the row itself (w*ᵀ p̃_c = w*ᵀ C w_c)
            wt = w @ V
            for start in range(0, N, self.fast_block):
                sl = slice(start, min(N, start + self.fast_block))
                Pc = f.P[sl]
                z[sl] = Pc @ wt
                out = _ger(-kappa, z[sl], ut, Pc)
                if not np.may_share_memory(out, Pc):  # pragma: no cover - BLAS wrote a copy
                    Pc[...] = out
                self._row_norms(Pc, f.num[sl], f.nrm[sl])
            dz = gamma * np.sqrt(np.maximum(f.peak, 0.0)) * np.linalg.norm(w)
        else:  # expansion p̃_c + κ (w_cᵀu) ũ: nothing cancels
            psi, scale = self.model.psi, self.model.energy_scale
            for start in range(0, N, self.chunk_size):
                sl = slice(start, min(N, start + self.chunk_size))
                z[sl] = (psi[sl] @ u) * scale[sl]
            for start in range(0, N, self.fast_block):
                sl = slice(start, min(N, start + self.fast_block))
                Pc = f.P[sl]
                out = _ger(kappa, z[sl], ut, Pc)
                if not np.may_share_memory(out, Pc):  # pragma: no cover
                    Pc[...] = out
                self._row_norms(Pc, f.num[sl], f.nrm[sl])
            np.maximum(f.peak, f.nrm, out=f.peak)
            dz = gamma * np.linalg.norm(self.model.psi, axis=1) * self.model.energy_scale * np.linalg.norm(u)
        kz2 = kappa * z * z
        f.qerr += 2.0 * _EPS * (np.abs(f.q) + kz2) + 2.0 * kappa * np.abs(z) * dz
        f.q -= sign * kz2
        stale = (f.nrm * self.refresh_shrink**2 < f.peak) | (f.qerr > self.refresh_rtol * (1.0 + f.q))
        if stale.any():
            self._refresh_rows(np.flatnonzero(stale))

    # -- protocol -----------------------------------------------------------------------
    def gains(self, candidates: np.ndarray) -> np.ndarray:
        if not self._fast:
            return self.reference_gains(candidates)
        candidates = np.asarray(candidates, dtype=np.int64)
        if self._vec is None:
            self._build_vectors()
        return self._vec.num[candidates] / (1.0 + self._vec.q[candidates])

    def _update(self, index: int, sign: int) -> float:
        W = np.atleast_2d(self.model.factor(index))
        _, U, K = self.state.update(W, sign)
        delta = sign * float(np.sum(K * (U.T @ self.B @ U)))  # ± tr(K Uᵀ B U), K and UᵀBU symmetric
        self._value += delta
        if self._fast:
            if self._vec is not None:
                self._update_vectors(W[0], U[:, 0], float(K[0, 0]), sign)
            self._identity = False
        return delta

    def value(self) -> float:
        return self._value


class AOptimal(TraceCriterion):
    """``a``: −tr(K_MM F(S)⁻¹ K_MM) / M, the mean posterior variance of the local
    energies at the sparse points (Kiefer 1959 A-optimality, in the sparse-point basis).

    Whitened: K_MM F⁻¹ K_MM = L C Lᵀ, so the value is −tr(C B) with B = LᵀL / M.
    Incremental update and cost: see :class:`TraceCriterion` (energy-only O(N M) per
    pick with N × M memory, else O(N M²)). Not submodular in general.
    """

    name = "a"

    def _weight(self, model) -> np.ndarray:
        return (model.L.T @ model.L) / model.M


class IOptimal(TraceCriterion):
    """``i``: −mean_{t∈T} v_S(t), v_S(t) = ψ_tᵀ C ψ_t / n_t² (I/V-optimality;
    Box & Draper 1959, Atkinson, Donev & Tobias 2007 ch. 10).

    Value −tr(C B) with the target moment B = mean_t ψ_t ψ_tᵀ / n_t² (M × M), formed
    once in O(T M²). The target is the pool (default) or ``target`` (:class:`TargetRows`,
    e.g. from ``target_rows(model, frames)``: frames where the potential will be used).
    Incremental update and cost: see :class:`TraceCriterion` (energy-only O(N M) per
    pick with N × M memory, else O(N M²)). Not submodular in general.
    """

    name = "i"

    def __init__(self, *, target: TargetRows | None = None, force_moment: np.ndarray | None = None, existing=None):
        super().__init__(existing=existing)
        self.target = target
        self.force_moment = force_moment

    def _weight(self, model) -> np.ndarray:
        if self.force_moment is not None:  # --target-observable forces: B = A, mean force variance
            return np.asarray(self.force_moment, dtype=float)
        t = self.target if self.target is not None else target_rows(model)
        scaled = t.psi / np.asarray(t.n_atoms, dtype=float)[:, None]
        return (scaled.T @ scaled) / len(scaled)
