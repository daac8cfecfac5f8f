"""The GAP dot-product kernel, sparse-point choice (CUR / FPS) and K_MM.

k(x, x') = δ² (x · x')^ζ for unit-length SOAP vectors of the same centre species,
0 across species (spec section 1). Sparse points are pool environments chosen per
centre species and concatenated in ascending atomic-number order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import scipy.linalg

from ..exceptions import ConfigurationError, InputError, NumericalError

#: Two sparse points whose normalised kernel exceeds 1 - DUPLICATE_TOL are duplicates.
DUPLICATE_TOL = 1e-10


@dataclass(frozen=True)
class Kernel:
    """Dot-product kernel δ² (x·x')^ζ (gap_fit ``soap ... zeta= delta=``)."""

    zeta: float = 4
    delta: float = 1.0

    def validate(self) -> "Kernel":
        if not self.zeta >= 1:
            raise ConfigurationError(f"kernel zeta must be >= 1, got {self.zeta}")
        if not self.delta > 0:
            raise ConfigurationError(f"kernel delta must be > 0, got {self.delta}")
        return self

    def __call__(self, X: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Kernel matrix k(X, Z), shape (len(X), len(Z))."""
        K = X @ Z.T
        return self.power(K)

    def power(self, dot: np.ndarray) -> np.ndarray:
        """δ² dot^ζ, in place on ``dot``.

        ζ a power of two: repeated squaring, no temporary; other integer ζ ≤ 8: repeated
        products; otherwise ``np.power``.
        """
        zeta = float(self.zeta)
        if zeta.is_integer() and (int(zeta) & (int(zeta) - 1)) == 0:
            for _ in range(int(zeta).bit_length() - 1):
                np.multiply(dot, dot, out=dot)
        elif zeta.is_integer() and zeta <= 8:
            base = dot.copy()
            for _ in range(int(zeta) - 1):
                dot *= base
        else:
            np.power(dot, zeta, out=dot)
        if self.delta != 1.0:
            dot *= self.delta**2
        return dot

    def to_dict(self) -> dict:
        return {"type": "dot_product", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Kernel":
        from ..hypers import check_keys

        check_keys(data, ("type", "zeta", "delta"), "kernel")
        if data.get("type", "dot_product") != "dot_product":
            raise ConfigurationError(f"unknown kernel type {data.get('type')!r}")
        return cls(zeta=data.get("zeta", 4), delta=data.get("delta", 1.0))


@dataclass
class SparsePoints:
    """Sparse (inducing) points, grouped by centre species.

    Attributes
    ----------
    species : tuple of int
        Centre species, ascending; the global order of the M points follows it.
    vectors : dict int -> (M_z, D) array
        Unit-length descriptor vectors of the points of species z.
    locations : dict int -> (M_z, 2) int array
        ``[frame, atom]`` of each point in the pool.
    dropped : list of [frame, atom]
        Candidates dropped as (near-)duplicates of an earlier point.
    """

    species: tuple[int, ...]
    vectors: dict
    locations: dict
    dropped: list

    @property
    def n_points(self) -> int:
        return sum(len(self.vectors[z]) for z in self.species)

    def slices(self) -> dict:
        """Column slice of each species in the global M ordering."""
        out, start = {}, 0
        for z in self.species:
            out[z] = slice(start, start + len(self.vectors[z]))
            start += len(self.vectors[z])
        return out

    def location_list(self) -> list[list[int]]:
        return [[int(f), int(a)] for z in self.species for f, a in self.locations[z]]

    def kernel_matrix(self, kernel: Kernel) -> np.ndarray:
        """k(Z, Z) without jitter: block diagonal over species, (M, M)."""
        M = self.n_points
        K = np.zeros((M, M))
        for z, sl in self.slices().items():
            K[sl, sl] = kernel(self.vectors[z], self.vectors[z])
        return K


def cholesky_with_jitter(K: np.ndarray, *, relative_jitter: float = 1e-8, max_tries: int = 8):
    """Cholesky factor of K + jitter·I with jitter = relative_jitter · mean diag(K).

    The jitter is gap_fit's ``sparse_jitter``; if the factorisation fails it is raised
    tenfold up to ``max_tries`` times (spec section 5).

    Returns
    -------
    L : (M, M) lower-triangular
    jitter : float, the absolute jitter used
    """
    scale = float(np.mean(np.diag(K))) if K.size else 1.0
    jitter = relative_jitter * scale
    for _ in range(max_tries):
        try:
            L = scipy.linalg.cholesky(K + jitter * np.eye(len(K)), lower=True, check_finite=True)
            return L, jitter
        except np.linalg.LinAlgError:
            jitter *= 10.0
    raise NumericalError(f"K_MM is not positive definite even with jitter {jitter:.3g}")


# ---------------------------------------------------------------------------
# Sparse-point choice. Both methods consume a re-iterable source of chunks
# ``source() -> iterator of (first_frame, AtomicDescriptors)``.
# ---------------------------------------------------------------------------

ChunkSource = Callable[[], Iterable]


def _resolve_counts(n_sparse, species) -> dict:
    if isinstance(n_sparse, Mapping):
        counts = {int(z): int(n_sparse.get(z, n_sparse.get(str(z), 0))) for z in species}
    else:
        counts = {int(z): int(n_sparse) for z in species}
    for z, m in counts.items():
        if m < 1:
            raise ConfigurationError(f"n_sparse for species {z} must be >= 1, got {m}")
    return counts


def sparse_point_notes(sparse: SparsePoints, n_sparse, *, sampled_environments: int | None = None,
                       pool_environments: int | None = None) -> list[str]:
    """What the sparse-point choice changed from the request, one sentence each.

    Fewer points than requested for a species (duplicates dropped, or fewer distinct
    environments / a lower descriptor rank than asked), and a choice made among a sample
    of the pool's environments rather than all of them.
    """
    notes = []
    requested = _resolve_counts(n_sparse, sparse.species)
    dropped: dict = {}
    for f, a in sparse.dropped:
        dropped.setdefault(int(f), []).append(int(a))
    for z in sparse.species:
        got = len(sparse.vectors[z])
        if got < requested[z]:
            notes.append(f"species {z}: {got} of the {requested[z]} requested sparse points "
                         f"(the pool offers no more distinct environments of this species, or its descriptor "
                         f"rank is lower; {len(sparse.dropped)} exact duplicates dropped in all)")
    if sparse.dropped and all(len(sparse.vectors[z]) >= requested[z] for z in sparse.species):
        notes.append(f"{len(sparse.dropped)} sparse-point candidates dropped as exact duplicates of earlier points")
    if sampled_environments is not None:
        notes.append(f"sparse points chosen among a sample of about {sampled_environments} of the pool's "
                     f"{pool_environments} environments (an exact choice over all of them may differ)")
    return notes


def _drop_duplicates(vectors: np.ndarray, locations: np.ndarray, order: np.ndarray):
    """Keep points in ``order`` unless they duplicate an earlier kept point."""
    keep: list[int] = []
    dropped: list[int] = []
    for i in order:
        if keep and np.max(vectors[keep] @ vectors[i]) > 1.0 - DUPLICATE_TOL:
            dropped.append(int(i))
        else:
            keep.append(int(i))
    return np.array(keep, dtype=np.int64), dropped


def leverage_projection(gram: np.ndarray, n: int) -> np.ndarray:
    """P (D × k) with ℓ(x) = |xᵀP|² the statistical leverage of x among the rows X with XᵀX = ``gram``.

    Top-k eigenpairs of the Gram matrix, k = min(n, rank) (rank: eigenvalues above 1e-12 of the
    largest); ℓ(x) = Σ_j (x·v_j)² / s_j² (Mahoney & Drineas 2009).
    """
    evals, evecs = np.linalg.eigh(gram)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    if not evals[0] > 0:
        return np.zeros((gram.shape[0], 1))
    rank = int(np.sum(evals > evals[0] * 1e-12))
    k = max(1, min(int(n), rank))
    return evecs[:, :k] / np.sqrt(evals[:k])


def cur_sparse_points(source: ChunkSource, species, n_sparse, *, seed: int = 0) -> SparsePoints:
    """Leverage-score CUR over *all* pool environments, streamed in two passes.

    Pass 1 accumulates the Gram matrix G = XᵀX per species (D × D). Its top-k
    eigenpairs (k = min(M, rank)) give each environment's statistical leverage
    ℓ(x) = Σ_j (x·v_j)² / s_j² (Mahoney & Drineas 2009). Pass 2 draws M environments
    without replacement with probability ∝ ℓ by weighted reservoir sampling
    (Efraimidis & Spirakis 2006: keep the M largest log(u)/ℓ), with one random stream
    per species from ``seed`` — independent of chunk size, deterministic from the seed.
    Exact duplicates (normalised kernel > 1 − 1e-10) are dropped and reported.
    """
    counts = _resolve_counts(n_sparse, species)
    grams: dict[int, np.ndarray] = {}
    for _, desc in source():
        for z, block in desc.blocks.items():
            g = block.values.T @ block.values
            grams[z] = grams[z] + g if z in grams else g
    _check_species_present(species, grams)
    projections = {z: leverage_projection(grams[z], counts[z]) for z in species}
    rngs = {z: np.random.default_rng([seed, z]) for z in species}
    best = {z: (np.empty(0), np.empty((0, grams[z].shape[0])), np.empty((0, 2), dtype=np.int64)) for z in species}
    for first, desc in source():
        for z, block in desc.blocks.items():
            lev = np.sum((block.values @ projections[z]) ** 2, axis=1)
            u = rngs[z].random(len(lev))
            with np.errstate(divide="ignore"):
                keys = np.where(lev > 0, np.log(u) / np.maximum(lev, 1e-300), -np.inf)
            loc = np.stack([block.frame + first, block.atom], axis=1)
            k_all = np.concatenate([best[z][0], keys])
            v_all = np.concatenate([best[z][1], block.values])
            l_all = np.concatenate([best[z][2], loc])
            m = min(counts[z], len(k_all))
            # stable ordering: key descending, then pool order
            top = np.lexsort((l_all[:, 1], l_all[:, 0], -k_all))[:m]
            best[z] = (k_all[top], v_all[top], l_all[top])
    vectors, locations, dropped = {}, {}, []
    for z in species:
        keys, vecs, locs = best[z]
        keep, drop = _drop_duplicates(vecs, locs, np.arange(len(keys)))
        vectors[z], locations[z] = vecs[keep], locs[keep]
        dropped += [locs[i].tolist() for i in drop]
    return SparsePoints(tuple(species), vectors, locations, dropped)


def fps_sparse_points(source: ChunkSource, species, n_sparse, *, kernel: Kernel, seed: int = 0) -> SparsePoints:
    """Farthest-point sampling in kernel distance d² = 2δ²(1 − (x·z)^ζ) per species.

    Needs all environments of a species in memory (N_env × D); the first point is
    drawn from ``seed``. Points at distance 0 from the chosen set are never picked.
    """
    counts = _resolve_counts(n_sparse, species)
    envs: dict[int, list] = {z: [] for z in species}
    locs: dict[int, list] = {z: [] for z in species}
    for first, desc in source():
        for z, block in desc.blocks.items():
            envs.setdefault(z, []).append(block.values)
            locs.setdefault(z, []).append(np.stack([block.frame + first, block.atom], axis=1))
    _check_species_present(species, {z: v for z, v in envs.items() if v})
    rng = np.random.default_rng(seed)
    vectors, locations = {}, {}
    for z in species:
        X = np.concatenate(envs[z])
        L = np.concatenate(locs[z])
        first = int(rng.integers(len(X)))
        chosen = [first]
        dist = 2.0 * kernel.delta**2 * (1.0 - kernel.power(X @ X[first]) / kernel.delta**2)
        for _ in range(min(counts[z], len(X)) - 1):
            nxt = int(np.argmax(dist))
            if dist[nxt] <= 2.0 * kernel.delta**2 * DUPLICATE_TOL:
                break
            chosen.append(nxt)
            d_new = 2.0 * kernel.delta**2 * (1.0 - kernel.power(X @ X[nxt]) / kernel.delta**2)
            np.minimum(dist, d_new, out=dist)
        vectors[z], locations[z] = X[chosen], L[chosen]
    return SparsePoints(tuple(species), vectors, locations, [])


def _check_species_present(species, found: Mapping) -> None:
    missing = [z for z in species if z not in found]
    if missing:
        raise InputError(f"no environment of species {missing} in the pool: cannot choose sparse points for it")


def choose_sparse_points(source: ChunkSource, species, n_sparse, *, method: str = "cur", kernel: Kernel, seed: int = 0):
    """Sparse points by ``method`` (``"cur"`` or ``"fps"``); see the two functions."""
    if method == "cur":
        return cur_sparse_points(source, species, n_sparse, seed=seed)
    if method == "fps":
        return fps_sparse_points(source, species, n_sparse, kernel=kernel, seed=seed)
    raise ConfigurationError(f"unknown sparse-point method {method!r} (use cur or fps)")

