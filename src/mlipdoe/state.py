"""The information state F̃ = I + Σ_s W_sᵀ W_s, its Cholesky factor and C = F̃⁻¹.

One object owns the numerics of adding and removing factor blocks, including every
decision about stability; the criteria only read C (and F̃) and the quantities
:meth:`InformationState.update` returns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg
from scipy.linalg.blas import drot

from .exceptions import InputError


def _ger(alpha: float, x: np.ndarray, y: np.ndarray, A: np.ndarray) -> np.ndarray:
    """A + alpha x yᵀ in place (BLAS dger on the Fortran view of a C-ordered A)."""
    out = scipy.linalg.blas.dger(alpha, y, x, a=A.T, overwrite_a=True)
    return out.T


def cholesky_update(R: np.ndarray, w: np.ndarray) -> float:
    """R ← R' with R'ᵀR' = RᵀR + wwᵀ (R upper triangular, C-ordered, in place); returns
    log det(R'ᵀR') − log det(RᵀR).

    Givens rotations of the rows of R against w (LINPACK ``dchud``), their angles taken at
    once from a = R⁻ᵀw: with ρ_i² = 1 + Σ_{k≤i} a_k², rotation i has c = ρ_{i−1}/ρ_i,
    s = a_i/ρ_i (Gill, Golub, Murray & Saunders 1974). O(M²), backward stable.
    """
    a = scipy.linalg.solve_triangular(R, w, trans="T", check_finite=False)
    rho2 = 1.0 + np.cumsum(a * a)
    rho = np.sqrt(rho2)
    c = np.concatenate([[1.0], rho[:-1]]) / rho
    s = a / rho
    x = np.array(w, dtype=float)
    for i in range(len(x)):
        drot(R[i, i:], x[i:], c[i], s[i], overwrite_x=True, overwrite_y=True)
    return float(np.log(rho2[-1]))


def cholesky_downdate(R: np.ndarray, w: np.ndarray) -> float:
    """R ← R' with R'ᵀR' = RᵀR − wwᵀ (in place); returns the change of log det.

    LINPACK ``dchdd`` (Stewart 1979): a = R⁻ᵀw, α² = 1 − |a|² (= det ratio), rotations
    from the tail sums α² + Σ_{k≥i} a_k² (no cancellation beyond that of α² itself),
    applied to the rows of R from the last. α² carries an absolute error of about
    eps·√cond(F̃)·|a|², so with leverages 1 − 1e-8 at cond(F̃) ≈ 1e10 it keeps ~3 digits
    of the determinant ratio while the factor itself stays backward stable; the state
    therefore takes the change of log det from the new factor (see
    :meth:`InformationState.update`), and uses α² only for the drift check.

    Raises
    ------
    InputError
        If RᵀR − wwᵀ is not positive definite (w was never added).
    """
    a = scipy.linalg.solve_triangular(R, w, trans="T", check_finite=False)
    alpha2 = 1.0 - float(a @ a)
    if not alpha2 > 0.0:
        raise InputError("cannot remove a frame that is not part of the information state")
    tail = alpha2 + np.cumsum((a * a)[::-1])[::-1]  # α² + Σ_{k≥i} a_k²
    after = np.concatenate([tail[1:], [alpha2]])
    root = np.sqrt(tail)
    c = np.sqrt(after) / root
    s = a / root
    x = np.zeros(len(a))
    for i in range(len(a) - 1, -1, -1):
        drot(x[i:], R[i, i:], c[i], s[i], overwrite_x=True, overwrite_y=True)
    return float(np.log(alpha2))


class InformationState:
    """F̃, C = F̃⁻¹ and (once a removal needs it) the Cholesky factor F̃ = RᵀR.

    **Adding** a block W (r × M): with U = C Wᵀ and S = I_r + W U, log det F̃ grows by
    log det S and C ← C − U S⁻¹ Uᵀ (Woodbury, O(M² r)). This is stable: the subtracted
    term is bounded by C itself.

    **Removing** W the same way, C + U (I − W C Wᵀ)⁻¹ Uᵀ, is not: with σ_E = 1 meV a frame's
    leverage w C wᵀ reaches 1 − 1e-8 and 1 − w C wᵀ is pure round-off. The one stability
    rule: while λ_min(I − W C Wᵀ) ≥ :attr:`woodbury_min` (1/2: the subtraction loses less
    than one bit) the Woodbury downdate is used, O(M² r), and the factor is dropped (it is
    rebuilt when next needed; trial removals undone by a restore get the old one back).
    Otherwise the removal works on the factor: R is downdated (rank-one Cholesky
    downdates, O(M²) per row; or, for blocks with more rows than :attr:`rank_one_rows`,
    one Cholesky of F̃ − WᵀW, which is accurate because F̃ − WᵀW ⪰ I), then Y = C_new Wᵀ comes from two triangular solves
    and T = I + W Y has no cancellation: log det F̃ drops by log det T and
    C ← C + Y T⁻¹ Yᵀ. Cost O(M² r), never a rebuild from the members.

    The factor is built from F̃ (one Cholesky) the first time it is needed — the first
    removal, or :meth:`factor` — and then maintained by every update, so additions-only
    runs (greedy) never pay for it.

    **Drift check** (with the factor present): every update computes the change of
    log det twice, from C (additions: log det S; removals: −log det T) and from the
    factor (its diagonal, or the rank-one ratios). If they differ by more than
    ``drift_tol · max(1, |Δ|)`` nats the state is refreshed exactly (:meth:`refresh`:
    R from F̃, C from R) and :attr:`n_refreshes` counts it. The threshold 1e-6 is four
    orders above the disagreement on healthy states at σ_E = 1 meV (≤ 2e-10 relative over
    400 updates with leverages 1 − 1e-8, tests/test_state.py's rows), and below the gain
    differences that decide a greedy or exchange step. Independently, the
    factor and C are refreshed after every :attr:`refresh_every` updates (default
    max(64, M): amortised O(M²) per update).
    """

    #: Largest allowed |Δ log det from C − Δ log det from R| / max(1, |Δ|) before a refresh.
    drift_tol = 1e-6
    #: Removals with λ_min(I − W C Wᵀ) at least this use the Woodbury downdate (it then loses
    #: less than one bit to cancellation); below it, the factor (see the class docstring).
    woodbury_min = 0.5

    def __init__(self, M: int):
        self.M = M
        self.F = np.eye(M)
        self.C = np.eye(M)
        self.log_det = 0.0
        self.R: np.ndarray | None = None
        self.n_refreshes = 0
        self._since_refresh = 0
        self.refresh_every = max(64, M)
        # blocks up to this many rows are up/downdated one row at a time (each row costs
        # M BLAS calls of ~4 µs from Python); bigger ones refactor F̃ ± WᵀW (M³/3 flops)
        self.rank_one_rows = max(1, M * M // 100_000)

    def copy(self) -> "InformationState":
        new = InformationState.__new__(InformationState)
        new.__dict__.update(self.__dict__)
        new.F, new.C = self.F.copy(), self.C.copy()
        new.R = None if self.R is None else self.R.copy()
        return new

    # -- the factor ------------------------------------------------------------------
    def factor(self) -> np.ndarray:
        """The upper Cholesky factor R of F̃ (built from F̃ on first use, then maintained)."""
        if self.R is None:
            self.R = np.ascontiguousarray(scipy.linalg.cholesky(self.F, lower=False, check_finite=False))
            self._since_refresh = 0
        return self.R

    def refresh(self) -> None:
        """Exact refresh: R from F̃ (one Cholesky), C = R⁻¹R⁻ᵀ, log det from R. O(M³)."""
        self.R = None
        R = self.factor()
        C = scipy.linalg.cho_solve((R, False), np.eye(self.M), check_finite=False)
        self.C = 0.5 * (C + C.T)
        self.log_det = 2.0 * float(np.sum(np.log(np.diagonal(R))))
        self.n_refreshes += 1

    def solve(self, X: np.ndarray) -> np.ndarray:
        """C X = F̃⁻¹ X by two triangular solves with the factor (O(M²) per column)."""
        return scipy.linalg.cho_solve((self.factor(), False), X, check_finite=False)

    # -- gains -------------------------------------------------------------------------
    def gain(self, W: np.ndarray) -> float:
        """log det(I + W C Wᵀ): the `d` increment of adding W (not applied)."""
        S = np.eye(len(W)) + W @ self.C @ W.T
        return float(np.linalg.slogdet(S)[1])

    def block_gains(self, blocks: Sequence[np.ndarray], *, batch: int = 256) -> np.ndarray:
        """log det(I + W_b C W_bᵀ) of many blocks at once (state unchanged).

        One GEMM of the stacked rows with C per batch, then a batched Cholesky of the
        (k_b × k_b) matrices padded to a common size with identity (padding adds zero
        rows to W_b, which leaves the determinant unchanged). Same numbers as
        :meth:`gain`, several times faster for force blocks (k ≈ M).
        """
        out = np.empty(len(blocks))
        for start in range(0, len(blocks), batch):
            part = [np.atleast_2d(b) for b in blocks[start : start + batch]]
            sizes = np.array([len(b) for b in part])
            k = int(sizes.max())
            W = np.concatenate(part)
            X = W @ self.C
            S = np.zeros((len(part), k, k))
            S[:, np.arange(k), np.arange(k)] = 1.0
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            for b in range(len(part)):
                lo, hi = offsets[b], offsets[b + 1]
                S[b, : hi - lo, : hi - lo] += X[lo:hi] @ W[lo:hi].T
            try:
                R = np.linalg.cholesky(S)
                out[start : start + len(part)] = 2.0 * np.log(np.diagonal(R, axis1=1, axis2=2)).sum(axis=1)
            except np.linalg.LinAlgError:
                out[start : start + len(part)] = np.linalg.slogdet(S)[1]
        return out

    # -- updates -----------------------------------------------------------------------
    def update(self, W: np.ndarray, sign: int = +1):
        """Add (sign=+1) or remove (sign=-1) the block W.

        Returns
        -------
        delta : float
            Change of log det F̃.
        U : (M, r) array
            C_out Wᵀ, where C_out is the covariance of the state *without* W (before an
            addition, after a removal).
        K : (r, r) array
            (I + W C_out Wᵀ)⁻¹, so that C_with = C_out − U K Uᵀ in both directions
            (adding: C_new = C − U K Uᵀ; removing: C_new = C + U K Uᵀ).

        Raises
        ------
        InputError
            When removing a block whose removal leaves F̃ not positive definite (it was
            never added); the state is then unchanged.
        """
        W = np.atleast_2d(np.asarray(W, dtype=float))
        if sign > 0:
            out = self._add(W)
        else:
            out = self._remove(W)
        if self.R is not None:
            self._since_refresh += 1
            if self._since_refresh >= self.refresh_every:
                self.refresh()
        return out

    def _add(self, W: np.ndarray):
        step = self._add_step(W)
        if step[-1] is not None and self._drifted(step[0], step[-1]):
            self.refresh()  # C or R has drifted: redo the step from the exact state
            step = self._add_step(W)
        predicted, U, K, R_new, _ = step
        if len(W) == 1:
            self.C = _ger(-float(K[0, 0]), U[:, 0], U[:, 0], self.C)
            self.F = _ger(1.0, W[0], W[0], self.F)
        else:
            self.C -= U @ K @ U.T
            self.C = 0.5 * (self.C + self.C.T)
            self.F += W.T @ W
        self.R = R_new
        self.log_det += predicted
        return predicted, U, K

    def _add_step(self, W: np.ndarray):
        """(Δ log det from C, U, K, new factor or None, Δ log det from the factor or None)."""
        r = len(W)
        U = self.C @ W.T
        S = np.eye(r) + W @ U
        if r == 1:
            s = float(S[0, 0])
            predicted, K = float(np.log(s)), np.array([[1.0 / s]])
        else:
            cS = scipy.linalg.cho_factor(S, lower=True, check_finite=False)
            predicted = 2.0 * float(np.sum(np.log(np.diagonal(cS[0]))))
            K = scipy.linalg.cho_solve(cS, np.eye(r), check_finite=False)
        if self.R is None:
            return predicted, U, K, None, None
        if r <= self.rank_one_rows:
            R_new = self.R.copy()
            realised = sum(cholesky_update(R_new, w) for w in W)
        else:
            R_new = np.ascontiguousarray(scipy.linalg.cholesky(self.F + W.T @ W, lower=False, check_finite=False))
            realised = self._factor_log_det(R_new) - self._factor_log_det()
        return predicted, U, K, R_new, realised

    def _remove(self, W: np.ndarray):
        r = len(W)
        U = self.C @ W.T
        S = np.eye(r) - W @ U
        lam = float(S[0, 0]) if r == 1 else float(np.linalg.eigvalsh(0.5 * (S + S.T))[0])
        if lam >= self.woodbury_min:  # loses less than one bit: Woodbury, and the factor is dropped
            if r == 1:
                K, Y = S, U / lam  # K = I − W C Wᵀ = (I + W C_new Wᵀ)⁻¹, Y = C_new Wᵀ = U S⁻¹
                self.C = _ger(1.0 / lam, U[:, 0], U[:, 0], self.C)
                self.F = _ger(-1.0, W[0], W[0], self.F)
                delta = float(np.log(lam))
            else:
                cS = scipy.linalg.cho_factor(S, lower=True, check_finite=False)
                K, Y = S, scipy.linalg.cho_solve(cS, U.T, check_finite=False).T
                self.C += Y @ U.T
                self.C = 0.5 * (self.C + self.C.T)
                self.F = self.F - W.T @ W
                delta = 2.0 * float(np.sum(np.log(np.diagonal(cS[0]))))
            self.R = None
            self.log_det += delta
            return delta, Y, K
        self.factor()
        step = self._remove_step(W)
        if self._drifted(step[0], step[-1]):
            self.refresh()
            step = self._remove_step(W)
        delta, Y, K, R_new, F_new, _ = step
        if len(W) == 1:
            self.C = _ger(float(K[0, 0]), Y[:, 0], Y[:, 0], self.C)
        else:
            self.C += Y @ K @ Y.T
            self.C = 0.5 * (self.C + self.C.T)
        self.F, self.R = F_new, R_new
        self.log_det += delta
        return delta, Y, K

    def _remove_step(self, W: np.ndarray):
        """(Δ log det from T, Y = C_new Wᵀ, K = T⁻¹, new factor, F̃ − WᵀW, Δ from the factor)."""
        r = len(W)
        F_new = self.F - W.T @ W
        if r <= self.rank_one_rows:
            R = self.R.copy()
            via_factor = sum(cholesky_downdate(R, w) for w in W)
        else:
            try:
                R = np.ascontiguousarray(scipy.linalg.cholesky(F_new, lower=False, check_finite=False))
            except np.linalg.LinAlgError:
                raise InputError("cannot remove a frame that is not part of the information state") from None
            via_factor = self._factor_log_det(R) - self._factor_log_det()
        Y = scipy.linalg.cho_solve((R, False), W.T, check_finite=False)  # C_new Wᵀ
        T = np.eye(r) + W @ Y
        if r == 1:
            t = float(T[0, 0])
            delta, K = -float(np.log(t)), np.array([[1.0 / t]])
        else:
            cT = scipy.linalg.cho_factor(T, lower=True, check_finite=False)
            delta = -2.0 * float(np.sum(np.log(np.diagonal(cT[0]))))
            K = scipy.linalg.cho_solve(cT, np.eye(r), check_finite=False)
        return delta, Y, K, R, F_new, via_factor

    def _factor_log_det(self, R: np.ndarray | None = None) -> float:
        R = self.R if R is None else R
        return 2.0 * float(np.sum(np.log(np.abs(np.diagonal(R)))))

    def _drifted(self, a: float, b: float) -> bool:
        return not abs(a - b) <= self.drift_tol * max(1.0, abs(a), abs(b))
