"""Force and virial rows of the information model (spec section 1) and their compression.

For a frame s with per-atom unit SOAP vectors x_i = p_i / |p_i| and sparse points z_m,

    energy   φ_m        = Σ_i k(x_i, z_m),                         k(x, z) = δ² (x·z)^ζ
    force    ψ_(j,a),m  = −Σ_i ∂k(x_i, z_m)/∂r_{j,a}
    virial   ψ_ab,m     = −Σ_i ∂k(x_i, z_m)/∂ε_ab                   (symmetrised, Voigt order)

The chain rule goes through featomic's analytic gradients of the *raw* power spectrum
p_i, the per-atom normalisation and the kernel power:

    dx_i = (I − x_i x_iᵀ) dp_i / |p_i|
    dk   = δ² ζ (x_i·z)^{ζ−1} z·dx_i
         = δ² ζ (x_i·z)^{ζ−1} (z·dp_i − (x_i·z)(x_i·dp_i)) / |p_i|.

Strain gradients are featomic's ∂p/∂ε_ab for positions and cell deformed by (I + ε);
the virial W_ab = −∂E/∂ε_ab is the symmetric part of the 3×3 matrix
(gap_fit/ASE convention: W = −V σ), reported as six rows (xx, yy, zz, yz, xz, xy).

Rows are *whitened* (Ψ = Φ L⁻ᵀ, K_MM = L Lᵀ). Noise variances follow gap_fit with
``sigma_per_atom=T``: σ_E² n_s (energy), σ_F² (each force component), σ_V² n_s (each
virial component); per-``config_type`` overrides through :meth:`Noise.sigma`.

Memory strategy (see docs/forces.md): a frame's r = 1 + 3n (+ 6) scaled rows
W_s = Λ_s^{-1/2} Ψ_s are compressed to S V_kᵀ from the thin SVD W_s = U S Vᵀ, keeping the
k ≤ min(r, M) singular values above ``1e-12 · s_max``; (S Vᵀ)ᵀ(S Vᵀ) = W_sᵀ W_s, so every
log-determinant gain is unchanged. The pool's raw force rows are never held: they are
computed chunk by chunk and compressed frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse
from ase import Atoms

from ..exceptions import InputError

#: Voigt order of the virial rows.
VIRIAL_COMPONENTS = ("xx", "yy", "zz", "yz", "xz", "xy")
_VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

#: Singular values below this fraction of the largest are dropped by :func:`compress_rows`.
COMPRESSION_RTOL = 1e-12

#: Atoms per featomic call in the gradient pass (gradients are ~50 neighbours × 3 × D per atom).
DEFAULT_GRADIENT_CHUNK_ATOMS = 1000


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


def compress_rows(W: np.ndarray, rtol: float = COMPRESSION_RTOL) -> np.ndarray:
    """Factor R (k × M), k ≤ min(r, M), with RᵀR = WᵀW (thin SVD, tiny singular values dropped).

    W = U S Vᵀ ⇒ WᵀW = V S² Vᵀ = (S Vᵀ)ᵀ (S Vᵀ); singular values below ``rtol · s_max``
    contribute less than rtol² relative to WᵀW and are dropped. Cost O(r M min(r, M)).
    """
    W = np.atleast_2d(W)
    if W.shape[0] == 0:
        return W.copy()
    try:
        _, s, vt = scipy.linalg.svd(W, full_matrices=False, lapack_driver="gesdd", check_finite=False)
    except np.linalg.LinAlgError:  # pragma: no cover - gesdd rarely fails to converge
        _, s, vt = scipy.linalg.svd(W, full_matrices=False, lapack_driver="gesvd", check_finite=False)
    keep = s > rtol * s[0] if s[0] > 0 else np.zeros(len(s), dtype=bool)
    return np.ascontiguousarray(s[keep, None] * vt[keep])


def kernel_gradient_rows(desc, sparse, kernel, n_atoms: Sequence[int], *, positions: bool = True,
                         strain: bool = False):
    """Raw (un-whitened) force and virial rows of every frame of one descriptor chunk.

    Parameters
    ----------
    desc : AtomicDescriptors
        One chunk, computed with the needed gradients (``"positions"``, ``"strain"``).
    sparse : SparsePoints
    kernel : Kernel
    n_atoms : (n_frames,) ints
        Atoms per frame of the chunk.

    Returns
    -------
    forces : (Σ n_atoms * 3, M) array or None
        −Σ_i ∂k(x_i, Z)/∂r_{j,a}, frame-major then atom-major then x, y, z.
    virials : (n_frames * 6, M) array or None
        −Σ_i ∂k(x_i, Z)/∂ε_ab, symmetrised, Voigt order per frame.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    n_frames = len(n_atoms)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    M = sparse.n_points
    cols = sparse.slices()
    forces = np.zeros((offsets[-1] * 3, M)) if positions else None
    strain_full = np.zeros((n_frames, 3, 3, M)) if strain else None
    zeta, d2 = float(kernel.zeta), kernel.delta**2
    for z, block in desc.blocks.items():
        if z not in cols:
            raise InputError(f"species {z} is not covered by the sparse points (species {list(cols)})")
        Z = sparse.vectors[z]
        x = block.values
        dots = x @ Z.T  # (n_env, M_z)
        # dk/dp = A ⊙ (z·dp − (x·z)(x·dp)),  A = δ² ζ (x·z)^{ζ−1} / |p|
        A = d2 * zeta * (dots ** (zeta - 1.0) if zeta != 1 else np.ones_like(dots)) / block.norms[:, None]
        Mz = Z.shape[0]
        if positions:
            G, samples = block.gradients["positions"]
            row, frame, atom = samples[:, 0], samples[:, 1], samples[:, 2]
            D = G.shape[-1]
            dk = (G.reshape(-1, D) @ Z.T).reshape(-1, 3, Mz)
            gx = np.einsum("gcd,gd->gc", G, x[row])
            dk -= gx[:, :, None] * dots[row][:, None, :]
            dk *= A[row][:, None, :]
            target = offsets[frame] + atom  # global atom index in the chunk
            # sum over centres i of the samples moving the same atom j (sparse scatter-add)
            S = scipy.sparse.csr_matrix((np.ones(len(target)), (target, np.arange(len(target)))),
                                        shape=(offsets[-1], len(target)))
            forces[:, cols[z]] -= (S @ dk.reshape(len(target), 3 * Mz)).reshape(-1, Mz)
        if strain:
            G, samples = block.gradients["strain"]
            row = samples[:, 0]
            D = G.shape[-1]
            dk = (G.reshape(-1, D) @ Z.T).reshape(-1, 3, 3, Mz)
            gx = np.einsum("gabd,gd->gab", G, x[row])
            dk -= gx[:, :, :, None] * dots[row][:, None, None, :]
            dk *= A[row][:, None, None, :]
            frame_of = block.frame[row]
            S = scipy.sparse.csr_matrix((np.ones(len(row)), (frame_of, np.arange(len(row)))),
                                        shape=(n_frames, len(row)))
            strain_full[:, :, :, cols[z]] -= (S @ dk.reshape(len(row), 9 * Mz)).reshape(n_frames, 3, 3, Mz)
    virials = None
    if strain:
        sym = 0.5 * (strain_full + strain_full.transpose(0, 2, 1, 3))
        virials = np.stack([sym[:, a, b] for a, b in _VOIGT_PAIRS], axis=1).reshape(n_frames * 6, M)
    return forces, virials


def _atom_chunks(frames: Sequence[Atoms], max_atoms: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[start, stop)`` frame ranges holding about ``max_atoms`` atoms each."""
    start, count = 0, 0
    for k, atoms in enumerate(frames):
        if count and count + len(atoms) > max_atoms:
            yield start, k
            start, count = k, 0
        count += len(atoms)
    if start < len(frames):
        yield start, len(frames)


def iter_observation_rows(descriptor, frames: Sequence[Atoms], *, sparse, kernel, L: np.ndarray, noise,
                          observations: Sequence[str], config_types: Sequence | None = None,
                          max_atoms: int = DEFAULT_GRADIENT_CHUNK_ATOMS,
                          progress=None) -> Iterator[tuple[int, ObservationRows]]:
    """Yield ``(frame_index, ObservationRows)`` for every frame, streamed by atom chunks.

    Descriptor gradients are requested only for the observed kinds (position gradients
    cost ~20× the values). ``progress`` is an optional ``callable(n_frames, n_atoms)``.
    """
    observations = tuple(observations)
    want_f, want_v = "forces" in observations, "virials" in observations
    gradients = (["positions"] if want_f else []) + (["strain"] if want_v else [])
    for k, atoms in enumerate(frames):
        if want_v and not np.all(atoms.pbc):
            raise InputError(f"frame {k} is not periodic in all directions: virials need a full cell "
                             "(drop 'virials' from the observations)")
    cols = sparse.slices()

    def whiten(rows):
        return scipy.linalg.solve_triangular(L, rows.T, lower=True, check_finite=False).T

    for start, stop in _atom_chunks(frames, max_atoms):
        chunk = frames[start:stop]
        desc = descriptor.compute(chunk, gradients=gradients)
        n_atoms = np.array([len(a) for a in chunk], dtype=np.int64)
        phi = np.zeros((len(chunk), sparse.n_points))
        for z, block in desc.blocks.items():
            if z not in cols:
                raise InputError(f"species {z} is not covered by the sparse points (species {list(cols)})")
            K = kernel(block.values, sparse.vectors[z])
            fr, starts = np.unique(block.frame, return_index=True)
            phi[fr, cols[z]] += np.add.reduceat(K, starts, axis=0)
        forces, virials = kernel_gradient_rows(desc, sparse, kernel, n_atoms, positions=want_f, strain=want_v)
        psi_e = whiten(phi)
        psi_f = whiten(forces) if want_f else None
        psi_v = whiten(virials) if want_v else None
        offsets = np.concatenate([[0], np.cumsum(n_atoms) * 3])
        for local, atoms in enumerate(chunk):
            index = start + local
            n = int(n_atoms[local])
            ct = config_types[index] if config_types is not None else atoms.info.get("config_type")
            per_atom = n if noise.per_atom else 1
            parts, var, kind = [psi_e[local : local + 1]], [noise.sigma("energy", ct) ** 2 * per_atom], ["energy"]
            if want_f:
                parts.append(psi_f[offsets[local] : offsets[local + 1]])
                var += [noise.sigma("force", ct) ** 2] * (3 * n)
                kind += ["force"] * (3 * n)
            if want_v:
                parts.append(psi_v[6 * local : 6 * local + 6])
                var += [noise.sigma("virial", ct) ** 2 * per_atom] * 6
                kind += ["virial"] * 6
            yield index, ObservationRows(np.concatenate(parts), np.array(var, dtype=float), np.array(kind), n)
        if progress is not None:
            progress(len(chunk), int(n_atoms.sum()))


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
