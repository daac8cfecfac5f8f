"""G-optimality: the worst-case predictive variance on the target."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import InformationCriterion, TargetRows, target_rows
from .trace import rowdot

_EPS = np.finfo(float).eps


class GOptimal(InformationCriterion):
    """``g``: −max_{t∈T} v_S(t), v_S(t) = ψ_tᵀ C ψ_t / n_t² (Kiefer & Wolfowitz 1960).

    Target: the pool (default) or ``target`` (:class:`TargetRows`).

    State: C and the target variances v (T,). Adding a block W (r × M), U = C Wᵀ,
    K = (I + W U)⁻¹: v_t ← v_t − a_tᵀ K a_t / n_t² with a_t = Uᵀ ψ_t. Removal: the same
    with the U = C_new Wᵀ and K that :meth:`~mlipdoe.state.InformationState.update`
    returns (stable at leverages near 1) and the opposite sign. The recurrence cancels
    (with σ_E = 1 meV a variance falls by 1e6–1e8), so each v_t carries a bound on the
    rounding added since it was last computed from C — per update eps (|v_t| + 2|Δv_t|)
    plus the rounding of a_t, eps |ψ_t| |U| — and is recomputed as ψ_tᵀ(C ψ_t)/n_t² once
    the bound passes :attr:`refresh_rtol` × v_t (O(M²) per target; about one sweep of
    the target per run). Cost O(T M r + M² r) per update.

    **Gains** (κ_c = 1/(1 + q_c), q_c = w_cᵀ C w_c): v'_t = v_t − κ_c a_tc² / n_t² with
    a_tc = w_cᵀ C ψ_t, and gain_c = max v − max_t v'_t, evaluated as
    min_t [(max v − v_t) + κ_c a_tc² / n_t²] (non-negative terms; max v − max_t v'_t
    would cancel).

    **Energy-only gains, targets pruned.** A term is at least its gap max v − v_t, so with
    the targets visited in decreasing order of v a candidate's minimum is final once it
    is at most the next target's gap. The first block of targets (:attr:`first_targets`)
    is scored for every candidate by one N × M × k product over the pool's rows; only
    candidates whose minimum is still above the next gap go on to the next block (twice
    as many targets, their rows gathered; candidates taken :attr:`max_block_entries` /
    block size at a time, so that a block of many targets holds ~4·10⁶ products). The
    gains are those of scoring all T targets (no tolerance is involved), at O(N M k) per
    pick when few candidates go on, against
    O(T N M). Worst case O(T N M): when the target variances are all within a
    candidate's gain, as at the first pick from an empty design (C = I; 11 s of the first
    200 picks from 2·10⁴ frames, M = 500, pool target), every target is needed. The
    vectors e_t = C ψ_t of the scored targets come from C with one step of iterative
    refinement (e ← e + C(ψ_t − F̃ e)): for the most uncertain targets C ψ_t is large in
    poorly informed directions and its rounding, amplified by the products with the
    candidates' rows, cost a_tc 8e-9 (relative) after 1,000 picks at σ_E = 1 meV; refined
    4e-11. q_c: for the pool target q_c = v_c n_c² s_c² (s_c the energy scale; the same
    quadratic form); for a separate target q_c keeps the rank-one recurrence
    q_c ← q_c ∓ κ (w_cᵀu)² with a rounding bound and refresh like v's.

    O(T N M) path (blocks; reference, :meth:`reference_gains`): A = Ψ_T C W_cᵀ
    (T × k) and the minimum over every target, in candidate chunks that keep the
    T × k block under ~4·10⁶ entries — the most expensive criterion with a large target;
    pass a smaller target if needed. Not submodular.
    """

    name = "g"
    max_block_entries = 4_000_000
    #: Targets (largest variances) in the first block of the energy-only gains.
    first_targets = 4
    #: A variance (or q_c) is recomputed from C once its rounding bound exceeds this fraction.
    refresh_rtol = 1e-9
    #: Energy-only gains with the target pruning (False: every target scored, O(T N M)).
    fast = True
    _state_attrs = ("members", "state", "_v", "_verr", "_q", "_qerr")

    def __init__(self, *, target: TargetRows | None = None, existing=None):
        super().__init__(existing=existing)
        self.target = target

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> GOptimal:
        t = self.target if self.target is not None else target_rows(model)
        self._psi_t = np.ascontiguousarray(t.psi)
        self._n2 = np.asarray(t.n_atoms, dtype=float) ** 2
        self._pool_target = self._psi_t is model.psi and np.array_equal(self._n2, np.asarray(model.n_atoms) ** 2.0)
        self._init_state(model, fixed, seed)
        self._verr = np.zeros(len(self._psi_t))
        self._q = self._qerr = None
        self._cache = {}
        self.n_row_refreshes = 0
        self._identity = not self.fixed and self.existing is None  # C = I exactly
        if self._identity:
            self._v = rowdot(self._psi_t, self._psi_t) / self._n2
        else:
            self._v = np.empty(len(self._psi_t))
            self._refresh_targets(np.arange(len(self._v)))
            self.n_row_refreshes = 0
        return self

    # -- variances and their rounding --------------------------------------------------
    def _lengths(self, rows: np.ndarray) -> np.ndarray:
        return np.sqrt(rowdot(rows, rows))

    def _target_lengths(self) -> np.ndarray:
        if getattr(self, "_tlen", None) is None or self._tlen[0] is not self._psi_t:
            self._tlen = (self._psi_t, self._lengths(self._psi_t))
        return self._tlen[1]

    def _pool_lengths(self) -> np.ndarray:
        """|w_c| of the pool frames (N,)."""
        if getattr(self, "_plen", None) is None or self._plen[0] is not self.model:
            self._plen = (self.model, self._lengths(self.model.psi) * self.model.energy_scale)
        return self._plen[1]

    def _variance_drop(self, U: np.ndarray, K: np.ndarray, sign: int = +1):
        """(Change of v (T,) when C changes by −sign · U K Uᵀ, bound on its rounding)."""
        A = self._psi_t @ U
        AK = A @ K
        drop = -sign * rowdot(AK, A) / self._n2
        err = (2.0 * _EPS * np.abs(drop)
               + 2.0 * _EPS * np.linalg.norm(AK, axis=1) * self._target_lengths() * np.linalg.norm(U) / self._n2)
        return drop, err

    def _times_covariance(self, X: np.ndarray) -> np.ndarray:
        """C X (M × k) with one step of iterative refinement: E = C X, E += C (X − F̃ E).

        C X for the most uncertain targets is large along poorly informed directions,
        and its rounding there is amplified in the products with the candidates' rows
        (a_tc lost 8e-9 relative after 1,000 picks at σ_E = 1 meV, against 4e-11 refined).
        Used for the gains only, never for the state (see :meth:`_refresh_targets`).
        """
        if self._identity:
            return np.array(X, dtype=float)
        C = self.state.C
        E = C @ X
        E += C @ (X - self.state.F @ E)
        return E

    def _refresh_targets(self, idx: np.ndarray) -> None:
        """v_t = ψ_tᵀ(C ψ_t)/n_t² from the state's C itself, not refined: the recurrence
        subtracts drops computed with that C, and stays consistent with it (C's own
        rounding is damped by its later updates; a refined v_t carried C's disagreement
        with F̃⁻¹ into every later drop, 1e-6 of v after 15 picks from a fixed frame)."""
        C = self.state.C
        for start in range(0, len(idx), 4096):
            part = idx[start : start + 4096]
            rows = self._psi_t[part]
            self._v[part] = rowdot(rows @ C, rows) / self._n2[part]
        self._verr[idx] = 0.0
        self.n_row_refreshes += len(idx)

    # -- q_c of the candidates (energy-only gains) ----------------------------------------
    def _candidate_q(self) -> np.ndarray:
        if self._pool_target:
            return self._v * (self._n2 * self.model.energy_scale**2)
        if self._q is None:
            self._q = self._fresh_q(slice(None))
            self._qerr = np.zeros(len(self._q))
        return self._q

    def _fresh_q(self, rows) -> np.ndarray:
        W = self.model.energy_factors(rows)
        out = np.empty(len(W))
        for start in range(0, len(W), 4096):
            Wc = W[start : start + 4096]
            out[start : start + len(Wc)] = rowdot(Wc @ self.state.C, Wc)
        return out

    def _update_q(self, u: np.ndarray, kappa: float, sign: int) -> None:
        if self._pool_target or self._q is None:
            return
        z = (self.model.psi @ u) * self.model.energy_scale
        kz2 = kappa * z * z
        self._qerr += 2.0 * _EPS * (np.abs(self._q) + kz2) + 2.0 * kappa * np.abs(z) * _EPS * (
            self._pool_lengths() * np.linalg.norm(u))
        self._q -= sign * kz2
        stale = np.flatnonzero(self._qerr > self.refresh_rtol * (1.0 + self._q))
        if len(stale):
            self._q[stale] = self._fresh_q(stale)
            self._qerr[stale] = 0.0
            self.n_row_refreshes += len(stale)

    # -- gains --------------------------------------------------------------------------
    def _addition_terms(self, W: np.ndarray):
        U = self.state.C @ W.T
        return U, np.linalg.inv(np.eye(len(W)) + W @ U)

    def reference_gains(self, candidates: np.ndarray) -> np.ndarray:
        """Gains scoring every target (O(T M) per candidate after O(M²); blocks as well)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        current = float(self._v.max())
        if not self._rank_one:  # min_t [(max v − v_t) + a_tᵀ K a_t / n_t²], the drop being ≤ 0
            gap = current - self._v
            return np.array([float(np.min(gap - self._variance_drop(
                *self._addition_terms(np.atleast_2d(self.model.factor(int(c)))))[0])) for c in candidates])
        out = np.empty(len(candidates))
        step = max(1, self.max_block_entries // len(self._v))
        C = self.state.C
        for start in range(0, len(candidates), step):
            chunk = candidates[start : start + step]
            W = self.model.energy_factors(chunk)          # (k, M)
            CW = C @ W.T                                  # (M, k)
            q = np.einsum("ij,ji->i", W, CW)              # w_cᵀ C w_c
            A = self._psi_t @ CW                          # (T, k)
            A *= A
            A /= self._n2[:, None] * (1.0 + q)[None, :]
            A += (current - self._v)[:, None]
            out[start : start + len(chunk)] = np.min(A, axis=0)
        return out

    def _order(self) -> np.ndarray:
        if "order" not in self._cache:
            self._cache["order"] = np.argsort(-self._v, kind="stable")
        return self._cache["order"]

    def _target_block(self, lo: int, hi: int) -> np.ndarray:
        """E = C Ψ_tᵀ / n_t (M × k) for the targets ``order[lo:hi]`` (cached until the state changes)."""
        key = ("E", lo, hi)
        if key not in self._cache:
            t = self._order()[lo:hi]
            E = np.empty((self.model.M, len(t)))
            for a in range(0, len(t), 4096):  # the refinement's temporaries for 4096 targets at a time
                part = t[a : a + 4096]
                E[:, a : a + len(part)] = self._times_covariance(self._psi_t[part].T) / np.sqrt(self._n2[part])[None, :]
            self._cache[key] = E
        return self._cache[key]

    def _first_block_products(self, E: np.ndarray) -> np.ndarray:
        """Ψ E for every pool frame (N × k), in row blocks (cached until the state changes)."""
        if "A1" not in self._cache:
            psi = self.model.psi
            out = np.empty((len(psi), E.shape[1]))
            ET = np.ascontiguousarray(E.T)
            for start in range(0, len(psi), 256):
                out[start : start + 256] = (ET @ psi[start : start + 256].T).T
            self._cache["A1"] = out
        return self._cache["A1"]

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        if not (self._rank_one and self.fast):
            return self.reference_gains(candidates)
        candidates = np.asarray(candidates, dtype=np.int64)
        q = self._candidate_q()
        order, v = self._order(), self._v
        gap = float(v[order[0]]) - v  # ≥ 0, exact for v_t ≥ max v / 2 (Sterbenz)
        T = len(v)
        best = np.full(len(candidates), np.inf)
        left = np.arange(len(candidates))
        lo, size = 0, max(1, int(self.first_targets))
        root = self.model.energy_scale[candidates] / np.sqrt(1.0 + q[candidates])  # √κ_c |w_c| / |ψ_c|
        while len(left) and lo < T:
            hi = min(T, lo + size)
            E = self._target_block(lo, hi)
            first = lo == 0 and len(left) > self.model.n_frames // 8
            step = max(1, self.max_block_entries // (hi - lo))  # candidates × targets held at once
            for a in range(0, len(left), step):
                part = left[a : a + step]
                rows = candidates[part]
                A = self._first_block_products(E)[rows] if first else self.model.psi[rows] @ E
                A *= root[part][:, None]
                np.square(A, out=A)  # κ_c a_tc² / n_t²
                A += gap[order[lo:hi]][None, :]
                best[part] = np.minimum(best[part], A.min(axis=1))
            following = gap[order[hi]] if hi < T else np.inf
            left = left[best[left] > following]
            lo, size = hi, 2 * size
        return best

    # -- updates -----------------------------------------------------------------------
    def _update(self, index: int, sign: int) -> float:
        before = float(self._v.max())
        refreshes = self.state.n_refreshes
        _, U, K = self.state.update(np.atleast_2d(self.model.factor(index)), sign)
        self._identity = False
        drop, err = self._variance_drop(U, K, sign)
        self._verr += 2.0 * _EPS * np.abs(self._v) + err
        self._v = self._v + drop
        if self.state.n_refreshes != refreshes:  # C recomputed from the factor: v follows the old C
            self._verr[:] = np.inf
            if self._q is not None:
                self._q = self._qerr = None  # rebuilt from C when next needed
        stale = np.flatnonzero(self._verr > self.refresh_rtol * np.abs(self._v))
        if len(stale):
            self._refresh_targets(stale)
        if self._rank_one:
            self._update_q(U[:, 0], float(K[0, 0]), sign)
        self._cache = {}
        return before - float(self._v.max())

    def restore(self, snap: dict) -> None:
        super().restore(snap)
        self._cache = {}

    def value(self) -> float:
        return -float(self._v.max())
