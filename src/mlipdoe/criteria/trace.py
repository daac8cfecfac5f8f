"""A- and I-optimality: linear (trace) functionals of C = F̃⁻¹."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg.lapack

from ..state import _ger
from .base import InformationCriterion, TargetRows, batched, target_rows

_EPS = np.finfo(float).eps


def rowdot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Σ_j A_ij B_ij for each row i (k,), of two (k, n) arrays (one BLAS dot per row).

    Two to three times faster than ``einsum("ij,ij->i")`` on blocks in cache.
    """
    return np.matmul(A[:, None, :], B[:, :, None])[:, 0, 0]


def weight_factor(B: np.ndarray) -> np.ndarray:
    """Y (r × M) with YᵀY = B for a positive semi-definite B (pivoted Cholesky, rank r).

    LAPACK ``dpstrf`` with a zero tolerance (stops at the first pivot ≤ 0). For a positive
    definite B its backward error is bounded entrywise, |B − YᵀY|_ij ≤ γ_M √(B_ii B_jj),
    like the rounding of forming xᵀBx itself; an eigendecomposition's error is eps‖B‖ in
    every direction, which x in the low-variance directions of a graded B does not
    survive. For a singular B (a target of fewer frames than M) the dropped remainder is
    round-off of B's null space (1e-11 √(B_ii B_jj) for 30 target rows, M = 100) and a few
    rows of such pivots may be kept.

    Parameters
    ----------
    B : (M, M) array

    Returns
    -------
    (r, M) array
    """
    B = 0.5 * (B + B.T)
    if not np.any(np.diag(B) > 0):
        return np.zeros((0, len(B)))
    c, piv, rank, info = scipy.linalg.lapack.dpstrf(B, tol=0.0, lower=0)
    if info < 0:  # pragma: no cover - argument error
        raise ValueError(f"dpstrf: argument {-info} is invalid")
    R = np.triu(c)[:rank]
    Y = np.zeros((rank, len(B)))
    Y[:, piv - 1] = R
    return Y


class _CandidateVectors:
    """Per-frame state of the energy-only trace gains (see :class:`TraceCriterion`).

    Attributes
    ----------
    H : (N, r) array
        Rows h_c = Y C w_c.
    num : (N,) array
        |h_c|² = w_cᵀ C B C w_c, from the rows after every update.
    err : (N,) array
        Bound on the rounding in |h_c| added since the row was last computed from C.
    q : (N,) array
        w_cᵀ C w_c (rank-one recurrence).
    qerr : (N,) array
        Bound on the rounding the recurrence has added to q since it was last computed from C.
    """

    __slots__ = ("H", "err", "num", "q", "qerr")

    def __init__(self, H, num, err, q, qerr):
        self.H, self.num, self.err, self.q, self.qerr = H, num, err, q, qerr

    def copy(self) -> _CandidateVectors:
        return _CandidateVectors(self.H.copy(), self.num.copy(), self.err.copy(), self.q.copy(), self.qerr.copy())

    def assign(self, other: _CandidateVectors) -> None:
        """Take ``other``'s values into these arrays (no second copy of the rows)."""
        for name in self.__slots__:
            np.copyto(getattr(self, name), getattr(other, name))


class _SizeGroup:
    """The pool frames whose factors have k rows, and their block-gain state.

    Attributes
    ----------
    frames : (n,) int array
        Pool indices, ascending.
    H : (n, k, r) array
        H_c = W_c C Yᵀ (rows of h = Y C w for each row w of the factor).
    S : (n, k, k) array
        S_c = W_c C W_cᵀ.
    herr, serr : (n, k) arrays
        Bounds on the rounding added to each row of H_c and to each diagonal entry of
        S_c since the frame was last computed from C.
    wnorm : (n, k) array
        |w| of each factor row (fixed).
    """

    __slots__ = ("frames", "k", "H", "S", "herr", "serr", "wnorm")

    def copy(self) -> _SizeGroup:
        out = _SizeGroup()
        out.frames, out.k, out.wnorm = self.frames, self.k, self.wnorm  # fixed: shared
        out.H, out.S, out.herr, out.serr = self.H.copy(), self.S.copy(), self.herr.copy(), self.serr.copy()
        return out

    def assign(self, other: _SizeGroup) -> None:
        for name in ("H", "S", "herr", "serr"):
            np.copyto(getattr(self, name), getattr(other, name))


class _BlockVectors:
    """Per-frame state of the block trace gains (see :class:`TraceCriterion`): frames
    grouped by factor size, and every frame's current gain."""

    __slots__ = ("groups", "gain")

    def __init__(self, groups, gain):
        self.groups, self.gain = groups, gain

    def copy(self) -> _BlockVectors:
        return _BlockVectors([g.copy() for g in self.groups], self.gain.copy())

    def assign(self, other: _BlockVectors) -> None:
        """Take ``other``'s values into these arrays (no second copy of the state)."""
        for mine, theirs in zip(self.groups, other.groups):
            mine.assign(theirs)
        np.copyto(self.gain, other.gain)


class TraceCriterion(InformationCriterion):
    """Value −tr(C B) for a fixed positive semi-definite weight matrix B (M × M).

    Gain of adding a block W (r × M): with U = C Wᵀ and K = (I_r + W U)⁻¹,
    C' = C − U K Uᵀ (Woodbury), so Δ = tr(K Uᵀ B U). Removing uses the U, K that
    :meth:`~mlipdoe.state.InformationState.update` returns (U = C_new Wᵀ, from the
    downdated factor) and the opposite sign, so no 1 − leverage division. The value is
    tracked by these increments; C by :class:`~mlipdoe.state.InformationState`
    (O(M² r) per add/remove).

    **Energy-only gains, O(N M) per pick.** gain_c = (w_cᵀ C B C w_c) / (1 + w_cᵀ C w_c).
    With B = YᵀY (:func:`weight_factor`, once) every pool frame keeps the vector
    h_c = Y C w_c (an N × r array, r = rank B ≤ M), so the numerator is |h_c|², a sum of
    squares computed afresh from the vectors after every update. Adding (removing)
    frame w* changes C by ∓κ u uᵀ (u, κ from :meth:`InformationState.update`) and every
    row by h_c ← h_c ∓ κ (w_cᵀu) Y u: one matrix–vector product with the pool's rows and
    one rank-one update of the stored rows, fused in blocks of rows that stay in cache.
    The denominator keeps q_c = w_cᵀ C w_c by q_c ← q_c ∓ κ (w_cᵀu)² (as ``d`` keeps its
    q). Scalar recurrences for the numerator itself lose every digit: with σ_E = 1 meV
    q_c reaches 1e6–1e8 and the numerator falls by its square.

    The vector recurrence still cancels (h_c shrinks by orders of magnitude while the
    terms it subtracts are as large as the old h_c), so every row carries a bound on the
    rounding added since it was last computed from C — per update
    eps (|h_c| + κ|z_c||Yu|) for the update itself, plus the rounding of z_c = w_cᵀu and
    of Yu taken as :attr:`dot_rounding` × eps relative to |w_c||u| and to |Y||u| (the
    typical rounding of a dot product; M × eps would bound it) — and likewise for q_c.
    A row whose bound passes :attr:`refresh_rtol` (relative to |h_c| or to 1 + q_c) is
    recomputed from C: h_c = Y(C w_c), q_c = w_cᵀ(C w_c), the products of the O(N M²)
    path. |C w_c| ≥ |w_c|/λ_max(F̃), so a row can shrink that much only a few times:
    measured at σ_E = 1 meV, every row was recomputed about twice over 200–1,000 picks
    (two O(N M²) sweeps, in two waves: picks 3–10 and 40–110), and the gains stayed
    within 1.2e-9 of the O(N M²) gains and of an extended-precision computation (the
    O(N M²) gains themselves: within 4e-10). The rows are built from C on the first
    gains after :meth:`initialize` or before a :meth:`snapshot` (so that trial moves
    undone by :meth:`restore` update them instead of rebuilding).

    Y is a pivoted Cholesky factor of B, whose backward error is graded like B itself;
    with an eigendecomposition of B instead (B diagonal in rotated rows, no factor) the
    numerators lost up to 5e-8: C w_c lies in B's low-variance directions, where the
    eigendecomposition's error eps‖B‖ is not small. A recurrence for C w_c itself with
    the coefficient taken from the row (w*ᵀ C w_c), which damps old rounding the way
    C's own update does, levelled off at 8e-9.
    Memory N × r floats: pools with N M > :attr:`fast_max_entries` use the O(N M²) path below.

    **Block factors (forces, virials), O(N k̄ M k*) per pick.** A frame's factor W_c has
    k_c rows; gain_c = tr((I + S_c)⁻¹ H_c H_cᵀ) with S_c = W_c C W_cᵀ and H_c = W_c C Yᵀ.
    Every frame keeps H_c (k_c × r) and S_c; a pick of rank k* (U, K from the state)
    changes them by A_c = W_c U: H_c ← H_c − A_c (±K (YU)ᵀ), S_c ← S_c ∓ A_c K A_cᵀ — one
    product of the pool's factors with U (M × k*), one of A with a k* × r matrix, then
    each frame's k_c × k_c Gram matrix H_c H_cᵀ and solve, instead of the two k_c × M × M
    products of the O(N M²) path. Frames are grouped by k_c so that all of this runs on
    stacks. Rounding bounds as above, per row of H_c (|h| as for one frame) and per
    diagonal entry of S_c (as q); a frame whose bounds pass :attr:`refresh_rtol`
    (|ΔH_c|_F against |H_c|_F, or a diagonal entry against 1 + S_c,ii) is recomputed from
    C. The gain is cheaper than the O(N M²) path by about M / k*: measured 4.2× at
    M = 1000 and 1.45× at M = 300 for frames of 8–32 atoms (k̄ = 58,
    ``benchmarks/block_gains.py``). Memory Σ k_c (r + k_c) floats, about as much again as
    the factors: block pools with Σ k_c M > :attr:`fast_block_max_entries`, with mean k_c
    above :attr:`fast_block_row_fraction` of M, or with factors read from disk use the
    O(N M²) path.

    **O(N M²) path** (blocks; reference, :meth:`reference_gains`): P = W_c C (k × M),
    gain_c = (p_c B p_cᵀ) / (1 + p_c·w_c) — two k × M × M products per pick and
    candidate chunk (blocks: O(M² r) per candidate).
    """

    chunk_size = 4096
    #: Largest N·M for which the energy-only gains keep their N × r rows (O(N M) per pick).
    fast_max_entries = 100_000_000
    #: Rows per block of the fused per-pick update (256 × M blocks stay in L2).
    fast_block = 256
    #: Largest Σ_c k_c · M (factor rows of the pool × M) for which block factors keep
    #: their H_c and S_c (O(N k̄ M k*) per pick instead of O(N k̄ M²)).
    fast_block_max_entries = 400_000_000
    #: Block factors keep their state only when their mean number of rows is at most this
    #: fraction of M: a pick's update costs about k*/M of the O(N k̄ M²) products (measured
    #: 1.45× faster at k̄ = 0.19 M, 4.2× at k̄ = 0.06 M, slower at k̄ = 0.4 M on one thread).
    fast_block_row_fraction = 0.25
    #: Factor rows per batch of the block update.
    fast_block_rows = 2048
    #: A row is recomputed from C once the rounding bound of |h_c| (or of q_c) exceeds
    #: this fraction of |h_c| (or of 1 + q_c).
    refresh_rtol = 1e-9
    #: Rounding of a dot product x·y, in units of eps |x||y| (its typical size; the worst case is M).
    dot_rounding = 1.0
    _state_attrs = ("members", "state", "_value", "_vec", "_built_at")

    def _weight(self, model) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0):
        weights = getattr(self, "_weights", None)
        if weights is None or weights[0] is not model:  # B (and Y) once per model
            weights = self._weights = [model, self._weight(model), None]
        self.B = weights[1]
        self._init_state(model, fixed, seed)
        self._value = -float(np.sum(self.state.C * self.B))
        self._vec, self._built_at = None, 0
        self._fast = self._rank_one and 0 < model.n_frames * model.M <= self.fast_max_entries
        if not self._rank_one and isinstance(model.factors, list):  # factors in memory
            ranks = model.factor_ranks
            self._fast_blocks = (0 < int(np.sum(ranks)) * model.M <= self.fast_block_max_entries
                                 and float(np.mean(ranks)) <= self.fast_block_row_fraction * model.M)
        else:
            self._fast_blocks = False
        if self._fast or self._fast_blocks:
            if weights[2] is None:
                weights[2] = weight_factor(self.B)
            self._Y = weights[2]
            self._absY = np.abs(self._Y)
            self._identity = not self.fixed and self.existing is None  # C = I exactly
        self.n_row_refreshes = 0
        return self

    # -- O(N M²) path -----------------------------------------------------------------
    def _block_gains(self, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """tr(K Uᵀ B U) of each block W (U = C Wᵀ, K = (I + W U)⁻¹): two GEMMs of the stacked
        rows (X = W C, X B), then the (k × k) systems solved together, padded with identity.

        O(k M²) per block of k rows, all of it in the two GEMMs; groups of 8 blocks were as
        fast as one at a time and 25 % faster than 64 (the padding) at M = 300, k ≈ 60."""
        part = [np.atleast_2d(np.asarray(W, dtype=float)) for W in blocks]
        sizes = np.array([len(W) for W in part])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        W = np.concatenate(part)
        X = W @ self.state.C
        XB = X @ self.B
        k = int(sizes.max())
        S = np.zeros((len(part), k, k))
        S[:, np.arange(k), np.arange(k)] = 1.0
        N = np.zeros((len(part), k, k))
        for b in range(len(part)):
            lo, hi = offsets[b], offsets[b + 1]
            S[b, : hi - lo, : hi - lo] += X[lo:hi] @ W[lo:hi].T
            N[b, : hi - lo, : hi - lo] = XB[lo:hi] @ X[lo:hi].T
        return np.trace(np.linalg.solve(S, N), axis1=1, axis2=2)

    def reference_gains(self, candidates: np.ndarray) -> np.ndarray:
        """Gains from C directly (O(M²) per candidate; blocks O(M² r)); state unchanged."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if not self._rank_one:
            return batched(candidates, lambda part: np.concatenate([
                self._block_gains([self.model.factor(int(c)) for c in part[a : a + 8]])
                for a in range(0, len(part), 8)]))
        out = np.empty(len(candidates))
        for start in range(0, len(candidates), self.chunk_size):
            chunk = candidates[start : start + self.chunk_size]
            W = self.model.energy_factors(chunk)
            P = W @ self.state.C
            out[start : start + len(chunk)] = np.einsum("ij,ij->i", P @ self.B, P) / (1.0 + np.einsum("ij,ij->i", P, W))
        return out

    # -- O(N M) path ------------------------------------------------------------------
    def _rows_from_c(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(h rows, |h|², q) of pool frames ``rows`` (slice or sorted indices) from the current C.

        h = Y (C w_c) in this order, as the O(N M²) path forms (W C) B (W C)ᵀ: W (C Yᵀ) rounds
        differently and was less accurate.
        """
        W = self.model.energy_factors(rows)
        X = W if self._identity else W @ self.state.C
        H = X @ self._Y.T
        return H, rowdot(H, H), rowdot(W, X)

    def _row_lengths(self) -> np.ndarray:
        """|w_c| of every pool frame (N,), computed once per model."""
        if getattr(self, "_lengths", None) is None or self._lengths[0] is not self.model:
            psi = self.model.psi
            n = np.concatenate([np.linalg.norm(psi[s : s + self.chunk_size], axis=1)
                                for s in range(0, len(psi), self.chunk_size)])
            self._lengths = (self.model, n * self.model.energy_scale)
        return self._lengths[1]

    def _build_vectors(self) -> None:
        N, r = self.model.n_frames, len(self._Y)
        f = _CandidateVectors(np.empty((N, r)), np.empty(N), np.zeros(N), np.empty(N), np.zeros(N))
        for start in range(0, N, self.chunk_size):
            sl = slice(start, min(N, start + self.chunk_size))
            f.H[sl], f.num[sl], f.q[sl] = self._rows_from_c(sl)
        self._vec = f
        self._built_at = self.state.n_refreshes

    def _refresh_rows(self, idx: np.ndarray) -> None:
        """Recompute rows ``idx`` (h, |h|², q) from C and clear their rounding bounds."""
        f = self._vec
        self.n_row_refreshes += len(idx)
        for start in range(0, len(idx), self.chunk_size):
            part = idx[start : start + self.chunk_size]
            f.H[part], f.num[part], f.q[part] = self._rows_from_c(part)
            f.err[part] = f.qerr[part] = 0.0

    def _update_vectors(self, u: np.ndarray, kappa: float, sign: int) -> None:
        """Apply C ← C − sign κ u uᵀ to every row and q, with their rounding bounds."""
        f, Y = self._vec, self._Y
        psi, scale = self.model.psi, self.model.energy_scale
        N = len(psi)
        gamma = _EPS * self.dot_rounding  # relative rounding of a dot product
        yu = Y @ u
        yu_norm = float(np.linalg.norm(yu))
        yu_err = gamma * float(np.linalg.norm(self._absY @ np.abs(u)))
        alpha = -sign * kappa
        before = np.sqrt(f.num)
        z = np.empty(N)
        for start in range(0, N, self.fast_block):
            sl = slice(start, min(N, start + self.fast_block))
            zc = psi[sl] @ u
            zc *= scale[sl]
            z[sl] = zc
            Hc = f.H[sl]
            if Hc.shape[1]:  # B ≠ 0
                out = _ger(alpha, zc, yu, Hc)
                if not np.may_share_memory(out, Hc):  # pragma: no cover - BLAS wrote a copy
                    Hc[...] = out
            f.num[sl] = rowdot(Hc, Hc)
        az = kappa * np.abs(z)
        dz = gamma * self._row_lengths() * float(np.linalg.norm(u))  # rounding of w_cᵀu
        f.err += _EPS * (before + az * yu_norm) + az * yu_err + kappa * dz * yu_norm
        kz2 = az * np.abs(z)
        f.qerr += 2.0 * _EPS * (np.abs(f.q) + kz2) + 2.0 * az * dz
        f.q -= sign * kz2
        h = np.sqrt(f.num)
        floor = 1e-30 * float(h.max()) if N else 0.0
        stale = (2.0 * f.err > self.refresh_rtol * h + floor) | (f.qerr > self.refresh_rtol * (1.0 + f.q))
        if stale.any():
            self._refresh_rows(np.flatnonzero(stale))

    # -- block factors: O(N k̄ M k*) per pick --------------------------------------------
    def _sub_batches(self, n: int, k: int):
        step = max(1, self.fast_block_rows // k)
        return [slice(a, min(n, a + step)) for a in range(0, n, step)]

    def _block_rows(self, frames: np.ndarray) -> np.ndarray:
        """The factors of ``frames`` stacked (Σ k × M, float64)."""
        return np.concatenate([np.asarray(self.model.factor(int(c)), dtype=float) for c in frames])

    def _blocks_from_c(self, frames: np.ndarray, k: int):
        """(H, S, |w| of every row) of frames with k-row factors, from the current C: X = W C
        as the O(N M²) path forms it, H_c = X_c Yᵀ, S_c = X_c W_cᵀ."""
        W = self._block_rows(frames)
        X = W if self._identity else W @ self.state.C
        n = len(frames)
        H = (X @ self._Y.T).reshape(n, k, -1)
        S = np.matmul(X.reshape(n, k, -1), W.reshape(n, k, -1).transpose(0, 2, 1))
        return H, S, np.linalg.norm(W, axis=1).reshape(n, k)

    @staticmethod
    def _gram(H: np.ndarray) -> np.ndarray:
        """H_c H_cᵀ of a stack of frames (its diagonal: |h|² of every row)."""
        return np.matmul(H, H.transpose(0, 2, 1))

    @staticmethod
    def _gains_of(S: np.ndarray, N: np.ndarray) -> np.ndarray:
        """tr((I + S_c)⁻¹ N_c), N_c = H_c H_cᵀ, of a stack of frames of one factor size (as
        :meth:`_block_gains`)."""
        return np.trace(np.linalg.solve(S + np.eye(S.shape[1]), N), axis1=1, axis2=2)

    def _build_blocks(self) -> None:
        sizes = self.model.factor_ranks
        gain = np.zeros(self.model.n_frames)
        groups = []
        for k in np.unique(sizes[sizes > 0]):  # a frame without rows gains nothing
            g = _SizeGroup()
            g.frames, g.k = np.flatnonzero(sizes == k), int(k)
            n = len(g.frames)
            g.H, g.S = np.empty((n, g.k, len(self._Y))), np.empty((n, g.k, g.k))
            g.wnorm, g.herr, g.serr = np.empty((n, g.k)), np.zeros((n, g.k)), np.zeros((n, g.k))
            for sl in self._sub_batches(n, g.k):
                g.H[sl], g.S[sl], g.wnorm[sl] = self._blocks_from_c(g.frames[sl], g.k)
                gain[g.frames[sl]] = self._gains_of(g.S[sl], self._gram(g.H[sl]))
            groups.append(g)
        self._vec = _BlockVectors(groups, gain)
        self._built_at = self.state.n_refreshes

    def _update_blocks(self, U: np.ndarray, K: np.ndarray, sign: int) -> None:
        """Apply C ← C − sign U K Uᵀ (a block of rank k*) to every frame's H_c, S_c, with
        their rounding bounds, and recompute the gains: A_c = W_c U (one product with the
        pool's factors), H_c ← H_c − A_c (sign K (YU)ᵀ), S_c ← S_c − sign A_c K A_cᵀ."""
        f = self._vec
        gamma = _EPS * self.dot_rounding
        KS = sign * K
        Ft = KS @ (self._Y @ U).T  # k* × r
        nU, nF = float(np.linalg.norm(U)), float(np.linalg.norm(Ft))
        f_err = gamma * float(np.linalg.norm(K)) * float(np.linalg.norm(self._absY @ np.abs(U))) + _EPS * nF
        rtol = self.refresh_rtol
        for g in f.groups:
            for sl in self._sub_batches(len(g.frames), g.k):
                frames = g.frames[sl]
                n = len(frames)
                A = self._block_rows(frames) @ U  # (n k, k*)
                Hs = g.H[sl]
                Hs.reshape(n * g.k, -1)[...] -= A @ Ft
                A3 = A.reshape(n, g.k, -1)
                AK = (A @ KS).reshape(A3.shape)
                g.S[sl] -= np.matmul(AK, A3.transpose(0, 2, 1))
                N = self._gram(Hs)
                rows = np.sqrt(np.einsum("nii->ni", N))  # |h| of every row after the update
                anorm = np.sqrt(np.einsum("nij,nij->ni", A3, A3))
                da = gamma * g.wnorm[sl] * nU  # rounding of each w·U
                # |h| before the update ≤ |h| after + |a| |F|
                g.herr[sl] += _EPS * (rows + 2.0 * anorm * nF) + anorm * f_err + da * nF
                sd = np.einsum("nii->ni", g.S[sl])
                aka = np.abs(np.einsum("nij,nij->ni", AK, A3))
                g.serr[sl] += 2.0 * _EPS * (np.abs(sd) + aka) + 2.0 * da * np.sqrt(np.einsum("nij,nij->ni", AK, AK))
                hnorm = np.sqrt(np.sum(rows * rows, axis=1))
                herr = np.sqrt(np.einsum("ni,ni->n", g.herr[sl], g.herr[sl]))
                stale = (2.0 * herr > rtol * hnorm + 1e-30 * float(hnorm.max())) \
                    | np.any(g.serr[sl] > rtol * (1.0 + sd), axis=1)
                if stale.any():
                    local = np.flatnonzero(stale)
                    idx = local + sl.start
                    self.n_row_refreshes += len(idx)
                    g.H[idx], g.S[idx], _ = self._blocks_from_c(g.frames[idx], g.k)
                    g.herr[idx] = g.serr[idx] = 0.0
                    N[local] = self._gram(g.H[idx])
                f.gain[frames] = self._gains_of(g.S[sl], N)

    # -- protocol -----------------------------------------------------------------------
    def gains(self, candidates: np.ndarray) -> np.ndarray:
        if self._fast_blocks:
            if self._vec is None:
                self._build_blocks()
            return self._vec.gain[np.asarray(candidates, dtype=np.int64)]
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
        if self._fast or self._fast_blocks:
            self._identity = False
            if self._vec is not None and self.state.n_refreshes != self._built_at:
                self._vec = None  # C was recomputed from the factor: the rows follow the old C
            if self._vec is not None and self._fast:
                self._update_vectors(U[:, 0], float(K[0, 0]), sign)
            elif self._vec is not None:
                self._update_blocks(U, K, sign)
        return delta

    def snapshot(self) -> dict:
        if self._vec is None:  # trial moves restored from it then update the rows
            if self._fast:
                self._build_vectors()
            elif self._fast_blocks:
                self._build_blocks()
        return super().snapshot()

    def restore(self, snap: dict) -> None:
        """As :meth:`Criterion.restore`; the per-frame rows are copied into the current
        arrays when they have the same layout, so a trial move undone holds two copies of
        them (the snapshot and the live one), not three."""
        if "_vec" not in snap:
            return super().restore(snap)
        snap = dict(snap)
        saved, live = snap.pop("_vec"), getattr(self, "_vec", None)
        super().restore(snap)
        if saved is not None and live is not None and type(saved) is type(live) and _same_layout(saved, live):
            live.assign(saved)
        else:
            self._vec = saved.copy() if saved is not None else None

    def value(self) -> float:
        return self._value


def _same_layout(a, b) -> bool:
    """Whether two per-frame states hold arrays of the same shapes (see ``assign``)."""
    if isinstance(a, _BlockVectors):
        return len(a.groups) == len(b.groups) and all(x.H.shape == y.H.shape for x, y in zip(a.groups, b.groups))
    return a.H.shape == b.H.shape


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
    once in O(T M²). ``force_moment`` replaces B: the mean force variance A
    (``--target-observable forces``) or the mix B/σ_E² + A/σ_F² (``energy,forces``,
    :func:`mlipdoe.api.target_moment`). The target is the pool (default) or ``target`` (:class:`TargetRows`,
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
        if self.force_moment is not None:  # --target-observable forces (or the energy+forces mix): B given
            return np.asarray(self.force_moment, dtype=float)
        return energy_moment(self.target if self.target is not None else target_rows(model))


def energy_moment(target: TargetRows) -> np.ndarray:
    """B = mean_t ψ_t ψ_tᵀ / n_t² (M × M): the target-mean per-atom energy variance is tr(C B)."""
    scaled = target.psi / np.asarray(target.n_atoms, dtype=float)[:, None]
    return (scaled.T @ scaled) / len(scaled)
