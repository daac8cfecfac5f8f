"""D-optimality: maximise log det F(S) − log det K_MM = log det F̃(S)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import InformationCriterion, batched


class DOptimal(InformationCriterion):
    """``d``: information gain about the weights α (nats; 2 × mutual information).

    Value: log det F̃(S). Gain of adding s: log det(I + W_s C W_sᵀ), C = F̃⁻¹
    (matrix determinant lemma; energy-only: log(1 + q_s), q_s = w_sᵀ C w_s).

    Incremental update, energy-only (single-row factors): every add or remove of a frame
    w* changes C by a rank-one term, C ← C − c_j u_j u_jᵀ with u_j = C_out w* (C_out: the
    covariance without w*, before an add, after a remove) and c_j = ±1/(1 + w*ᵀu_j)
    (Sherman–Morrison, as returned by :meth:`InformationState.update`; no 1 − leverage
    division), so q_s ← q_s − c_j (w_sᵀ u_j)². These updates are *deferred*: the
    criterion keeps q_s with a stamp (the number of updates it has seen) and the scaled
    vectors v_j = √|c_j| u_j, and brings a frame's q_s up to date only when its gain is
    asked for, with one matrix product of its row against the v_j it missed. Asking for
    every frame after every pick costs one N × M matrix–vector product per pick, as an
    eager update would; lazy greedy asks for few frames, and each frame's catch-ups over a
    whole run sum to at most two M-vector products per update (they telescope; frames are
    grouped with at most 2× waste), done as matrix–matrix products. Plus O(M²) per update
    for C.
    Blocks of r rows use the Woodbury form, batched (:meth:`InformationState.block_gains`);
    cost O(M² r) per evaluated gain, O(N M² r) per plain greedy pick.
    Monotone submodular (Krause & Golovin 2014), so lazy greedy is exact.

    Options: ``existing`` (:class:`~mlipdoe.criteria.base.ExistingRows`).
    """

    name = "d"
    submodular = True
    chunk_size = 8192
    _state_attrs = ("members", "state", "_q")

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "DOptimal":
        self._init_state(model, fixed, seed)
        self._scale = model.energy_scale
        self._clear_pending()
        self._q = None
        if self._rank_one:  # C = I before any frame enters: q_s = |w_s|²
            empty = not self.fixed and self.existing is None
            self._q = self._quadratic_forms(identity=empty)
        return self

    # -- deferred rank-one updates ------------------------------------------------
    def _clear_pending(self) -> None:
        """No pending updates: every q_s is current."""
        self._k = 0  # updates recorded since q was last current for all frames
        self._V = np.empty((0, self.model.M))  # rows v_j = √|c_j| u_j
        self._sign = np.empty(0)  # sign of c_j (+1 add, −1 remove)
        self._stamp = np.zeros(self.model.n_frames, dtype=np.int64) if self._rank_one else None

    def _record(self, u: np.ndarray, c: float) -> None:
        if self._k == len(self._V):  # grow by doubling (amortised O(M) per update)
            cap = max(16, 2 * len(self._V))
            V, sign = np.empty((cap, self.model.M)), np.empty(cap)
            V[: self._k], sign[: self._k] = self._V[: self._k], self._sign[: self._k]
            self._V, self._sign = V, sign
        self._V[self._k] = np.sqrt(abs(c)) * u
        self._sign[self._k] = 1.0 if c > 0 else -1.0
        self._k += 1

    #: Update vectors per product in a catch-up (bounds its temporaries to rows × 512).
    catch_up_block = 512

    def _catch_up(self, rows: np.ndarray, stamps: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Σ_{j ≥ stamp_s} c_j (w_sᵀu_j)² for each row ψ_s (the amount q_s must drop)."""
        drop = np.zeros(len(rows))
        for lo in range(int(stamps.min()), self._k, self.catch_up_block):
            hi = min(lo + self.catch_up_block, self._k)
            Y = rows @ self._V[lo:hi].T
            Y *= Y
            Y *= self._sign[lo:hi]
            skip = np.clip(stamps - lo, 0, hi - lo)  # leading columns row s must not count
            if not skip.any():
                drop += Y.sum(axis=1)
            else:  # suffix sums: row s takes the last (hi − lo − skip_s) columns
                suffix = np.cumsum(Y[:, ::-1], axis=1)
                take = hi - lo - skip
                drop += np.where(take > 0, suffix[np.arange(len(Y)), np.maximum(take - 1, 0)], 0.0)
        return drop * scale * scale

    def _bring_up_to_date(self, candidates: np.ndarray) -> None:
        stale = candidates[self._stamp[candidates] < self._k]
        if len(stale) == 0:
            return
        if len(stale) > min(self.chunk_size // 2, self.model.n_frames // 8):  # a sweep: contiguous chunks, no copies
            self._sync()
            return
        stale = stale[np.argsort(self._stamp[stale], kind="stable")]
        missed = self._k - self._stamp[stale]  # decreasing
        # groups in which every frame missed at least half the updates of the group's first
        # (one product each, at most 2× the needed flops, about log2(k) groups)
        a = 0
        while a < len(stale):
            b = a + int(np.searchsorted(-missed[a:], -((missed[a] + 1) // 2), side="right"))
            idx = stale[a:b]
            self._q[idx] -= self._catch_up(self.model.psi[idx], self._stamp[idx], self._scale[idx])
            self._stamp[idx] = self._k
            a = b

    def _sync(self) -> None:
        """Bring every q_s up to date and drop the recorded updates."""
        if self._k == 0:
            return
        psi = self.model.psi
        for start in range(0, self.model.n_frames, self.chunk_size):
            sl = slice(start, start + self.chunk_size)
            stamps = self._stamp[sl]
            if int(stamps.min()) < self._k:
                self._q[sl] -= self._catch_up(psi[sl], stamps, self._scale[sl])
        self._clear_pending()

    def _quadratic_forms(self, identity: bool = False) -> np.ndarray:
        """q_s = w_sᵀ C w_s for every pool frame, in chunks of rows (C = I: |w_s|², no GEMM)."""
        model, C = self.model, self.state.C
        q = np.empty(model.n_frames)
        for start in range(0, model.n_frames, self.chunk_size):
            W = model.energy_factors(slice(start, start + self.chunk_size))
            q[start : start + len(W)] = np.einsum("ij,ij->i", W if identity else W @ C, W)
        return q

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        if self._rank_one:
            candidates = np.asarray(candidates, dtype=np.int64)
            self._bring_up_to_date(candidates)
            return np.log1p(self._q[candidates])
        return batched(candidates, lambda part: self.state.block_gains([self.model.factor(int(c)) for c in part]))

    def _update(self, index: int, sign: int) -> float:
        # C_with = C_out − K u uᵀ: adding, C loses K u uᵀ (c = K); removing, it gains it (c = −K)
        delta, U, K = self.state.update(self.model.factor(index), sign)
        if self._rank_one:
            self._record(U[:, 0], sign * float(K[0, 0]))
        return delta

    def snapshot(self) -> dict:
        if self._rank_one:
            self._sync()  # a snapshot holds current q only (cheap to copy and restore)
        return super().snapshot()

    def restore(self, snap: dict) -> None:
        super().restore(snap)
        if self._rank_one:
            self._clear_pending()

    def value(self) -> float:
        return self.state.log_det

