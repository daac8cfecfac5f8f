"""featomic configured to reproduce GAP's own ``soap`` descriptor (quippy) to round-off.

GAP's ``soap`` (``quippy.descriptors.Descriptor("soap cutoff=... n_max=... ...")``, the
descriptor ``gap_fit`` uses) does not project the atomic density onto a radial basis by an
integral. For each neighbour j at distance r it evaluates the l-th radial component of
its Gaussian, ``g_l(r, ρ) = exp(-α(r² + ρ²)) i_l(2αrρ)`` with α = 1/(2 atom_sigma²) and
i_l the modified spherical Bessel function, at ``n_max`` equally spaced points
``ρ_b = (b - 1) h``, ``h = (cutoff + atom_sigma √(2·10·ln 10)) / n_max`` (the last term
from ``basis_error_exponent = 10``), interpolates it with Gaussians centred on those
points (matrix ``C_ab = exp(-α(ρ_a - ρ_b)²)``) and writes the interpolant in the
orthonormal basis obtained from the Cholesky factor ``S = L Lᵀ`` of the Gaussians'
radial overlap matrix. Its radial coefficient for neighbour j is therefore the fixed
function

    R_la(r) = Σ_b g_l(r, ρ_b) [C⁻¹ L]_ba ,

multiplied by the cosine cutoff ``f_c(r)`` (width ``cutoff_transition_width``); the centre
adds ``central_weight · R_0a(0) Y_00`` to its own species channel (the same as a
neighbour at r = 0). featomic takes such an ``R_la`` as a ``Tabulated`` radial basis
(cubic Hermite spline of values and derivatives) with a ``DiracDelta`` density: then its
spherical expansion coefficients equal GAP's up to the spline error (about 2e-13 relative
with the default grid step ``atom_sigma / 400``).

The power spectra then differ only by a fixed signed selection (a linear isometry on
featomic's vectors, so it keeps every dot product):

* GAP stores each unordered pair of (species, n) channels once, ``ia >= jb`` over the
  flattened index ``ia = species · n_max + n``, and multiplies off-diagonal pairs by √2;
  featomic keeps both orders ``(n_1, n_2)`` within one species pair (no factor) and one
  block per unordered species pair with √2 already applied;
* featomic's invariant carries the Clebsch–Gordan sign ``(-1)^l``; both divide by √(2l+1);
* GAP appends one constant element, ``covariance_sigma0`` (0 by default), after
  normalising.

Limits: ``central_reference_all_species=T`` with several species, ``average=T`` and
``diagonal_radial=T`` are not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.special
from ase import Atoms

from ..exceptions import ConfigurationError, InputError

__all__ = [
    "GapSoapRadial",
    "ProjectedSOAP",
    "QuippyMatchedSOAP",
    "QuippySOAPResult",
    "featomic_soap_matching_quippy",
    "quippy_layout",
    "quippy_soap_string",
]


@dataclass(frozen=True)
class GapSoapRadial:
    """GAP's ``soap`` radial coefficient functions R_la(r), l = 0..l_max, a = 1..n_max.

    Parameters
    ----------
    cutoff : float
        ``cutoff`` (Å).
    n_max, l_max : int
        Number of radial functions and the largest angular channel.
    atom_sigma : float
        Width of the atomic Gaussians (Å).
    basis_error_exponent : float
        GAP's ``basis_error_exponent`` (default 10): the grid reaches
        ``cutoff + atom_sigma √(2 · basis_error_exponent · ln 10)``.
    """

    cutoff: float
    n_max: int
    l_max: int
    atom_sigma: float
    basis_error_exponent: float = 10.0

    def __post_init__(self):
        if not self.cutoff > 0 or not self.atom_sigma > 0:
            raise ConfigurationError("GAP soap needs cutoff > 0 and atom_sigma > 0")
        if self.n_max < 1 or self.l_max < 0:
            raise ConfigurationError("GAP soap needs n_max >= 1 and l_max >= 0")

    @property
    def alpha(self) -> float:
        """α = 1 / (2 atom_sigma²) (1/Å²)."""
        return 0.5 / self.atom_sigma**2

    @property
    def r_basis(self) -> np.ndarray:
        """(n_max,) grid ρ_b = (b - 1) h of the Gaussian centres (Å)."""
        top = self.cutoff + self.atom_sigma * np.sqrt(2.0 * self.basis_error_exponent * np.log(10.0))
        return np.arange(self.n_max) * (top / self.n_max)

    def overlap(self) -> np.ndarray:
        """(n_max, n_max) S_ab = ∫_0^∞ r² exp(-α(r-ρ_a)²) exp(-α(r-ρ_b)²) dr, in closed form."""
        a = self.alpha
        ri, rj = self.r_basis[:, None], self.r_basis[None, :]
        s = ri + rj
        return (np.exp(-a * (ri**2 + rj**2)) * np.sqrt(2.0) * a**1.5 * s
                + a * np.exp(-0.5 * a * (ri - rj) ** 2) * np.sqrt(np.pi) * (1.0 + a * s**2)
                * (1.0 + scipy.special.erf(np.sqrt(a / 2.0) * s))) / np.sqrt(128.0 * a**5)

    def transform(self) -> np.ndarray:
        """(n_max, n_max) ``C⁻¹ L``: grid values → orthonormal-basis coefficients (row vector convention)."""
        rb = self.r_basis
        cov = np.exp(-self.alpha * (rb[:, None] - rb[None, :]) ** 2)
        return np.linalg.solve(cov, np.linalg.cholesky(self.overlap()))

    def grid_functions(self, r: np.ndarray, ell: int, *, derivative: bool = False) -> np.ndarray:
        """g_l(r, ρ_b) = exp(-α(r² + ρ_b²)) i_l(2αrρ_b) (or d/dr), shape (n_points, n_max)."""
        a, rb = self.alpha, self.r_basis[None, :]
        r = np.asarray(r, dtype=np.float64).reshape(-1, 1)
        x = 2.0 * a * r * rb

        def scaled_bessel(order):  # exp(-x) i_order(x), finite at x = 0
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.sqrt(np.pi / (2.0 * x)) * scipy.special.ive(order + 0.5, x)
            return np.where(x == 0.0, 1.0 if order == 0 else 0.0, v)

        gauss = np.exp(-a * (r - rb) ** 2)  # = exp(-α(r²+ρ²)) · exp(x)
        value = gauss * scaled_bessel(ell)
        if not derivative:
            return value
        # i_l'(x) = i_{ell+1}(x) + (ell/x) i_l(x), with i_1'(0) = 1/3
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(x == 0.0, 0.0, ell / x)
        dbessel = scaled_bessel(ell + 1) + ratio * scaled_bessel(ell)
        if ell == 1:
            dbessel = np.where(x == 0.0, 1.0 / 3.0, dbessel)
        return -2.0 * a * r * value + gauss * dbessel * 2.0 * a * rb

    def values(self, r: np.ndarray, ell: int, *, derivative: bool = False) -> np.ndarray:
        """R_la(r) (or dR_la/dr), shape (n_points, n_max)."""
        return self.grid_functions(r, ell, derivative=derivative) @ self.transform()


def quippy_layout(species: Sequence[int], n_max: int, l_max: int) -> tuple[list[tuple], np.ndarray]:
    """Which featomic power-spectrum element, times which factor, is each element of GAP's vector.

    Parameters
    ----------
    species : sequence of int
        quippy's ``species_Z``, in its order.
    n_max, l_max : int

    Returns
    -------
    columns : list of (neighbor_1_type, neighbor_2_type, l, n_1, n_2), length D - 1
        Property of featomic's ``SoapPowerSpectrum`` after
        ``keys_to_properties(["neighbor_1_type", "neighbor_2_type"])``, in GAP's order
        (flattened channels ``ia = species_index · n_max + n``, ``jb <= ia``, then l).
    factors : (D - 1,) float64
        ``(-1)^l`` times √2 for ``n_1 != n_2`` within one species (featomic's species-pair
        blocks already carry √2).
    """
    species = [int(z) for z in species]
    columns, factors = [], []
    channels = [(z, a) for z in species for a in range(n_max)]
    for ia, (zi, a) in enumerate(channels):
        for zj, b in channels[: ia + 1]:
            for ell in range(l_max + 1):
                sign = -1.0 if ell % 2 else 1.0
                if zi == zj:
                    columns.append((zi, zi, ell, a, b))
                    factors.append(sign * (np.sqrt(2.0) if a != b else 1.0))
                elif zi < zj:
                    columns.append((zi, zj, ell, a, b))
                    factors.append(sign)
                else:
                    columns.append((zj, zi, ell, b, a))
                    factors.append(sign)
    return columns, np.array(factors)


def quippy_soap_string(*, cutoff: float, n_max: int, l_max: int, atom_sigma: float, species: Sequence[int],
                       cutoff_transition_width: float = 0.5, central_weight: float = 1.0,
                       covariance_sigma0: float = 0.0, centers: Sequence[int] | None = None,
                       normalise: bool = True) -> str:
    """The quippy/gap_fit descriptor string of the same SOAP (for ``quippy.descriptors.Descriptor``)."""
    species = [int(z) for z in species]
    centers = species if centers is None else [int(z) for z in centers]
    return (f"soap cutoff={cutoff!r} cutoff_transition_width={cutoff_transition_width!r} n_max={n_max} "
            f"l_max={l_max} atom_sigma={atom_sigma!r} central_weight={central_weight!r} "
            f"covariance_sigma0={covariance_sigma0!r} n_species={len(species)} "
            f"species_Z={{{' '.join(map(str, species))}}} n_Z={len(centers)} Z={{{' '.join(map(str, centers))}}} "
            f"normalise={'T' if normalise else 'F'}")


@dataclass
class QuippySOAPResult:
    """SOAP vectors in quippy's layout.

    Attributes
    ----------
    values : (n_env, D) float64
        Vectors (unit length unless ``normalise=False``), element for element quippy's
        ``calc(...)["data"]`` (last element ``covariance_sigma0``),
        ``D = n_pairs (l_max + 1) + 1``.
    centers : (n_env, 2) int64
        (frame, atom) of each row: frame by frame, atoms in index order (quippy's order
        within a frame).
    gradients : (n_grad, 3, D) float64 or None
        d values[row] / d r_{atom, α} (constant element: 0), as quippy's ``grad_data``;
        periodic images of an atom are summed onto it.
    gradient_index : (n_grad, 3) int64 or None
        (row, frame, atom) of each gradient entry.
    """

    values: np.ndarray
    centers: np.ndarray
    gradients: np.ndarray | None = None
    gradient_index: np.ndarray | None = None


class QuippyMatchedSOAP:
    """featomic ``SoapPowerSpectrum`` whose output equals quippy's ``soap`` descriptor.

    Built by :func:`featomic_soap_matching_quippy`; see the module docstring for the maths.

    Attributes
    ----------
    radial : GapSoapRadial
        The splined radial functions.
    hypers : dict
        Keyword arguments of ``featomic.SoapPowerSpectrum``.
    dimension : int
        Length D of a vector (quippy's ``Descriptor.dimensions()``).
    """

    def __init__(self, *, cutoff, n_max, l_max, atom_sigma, species, cutoff_transition_width=0.5,
                 central_weight=1.0, covariance_sigma0=0.0, centers=None, normalise=True,
                 spline_step=None):
        from featomic import SoapPowerSpectrum
        from featomic.basis import Explicit
        from featomic.cutoff import Cutoff, ShiftedCosine, Step
        from featomic.density import DiracDelta
        from featomic.splines import Spline, SplinedRadialBasis
        from metatensor import Labels

        species = tuple(int(z) for z in species)
        if len(species) == 0 or len(set(species)) != len(species):
            raise ConfigurationError(f"species must be distinct atomic numbers, got {list(species)}")
        if not 0 <= cutoff_transition_width < cutoff:
            raise ConfigurationError("cutoff_transition_width must be in [0, cutoff)")
        self.radial = GapSoapRadial(float(cutoff), int(n_max), int(l_max), float(atom_sigma))
        self.species = species
        self.centers = species if centers is None else tuple(int(z) for z in centers)
        if set(self.centers) - set(species):
            raise ConfigurationError(f"centres {sorted(set(self.centers) - set(species))} are not in species")
        self.covariance_sigma0 = float(covariance_sigma0)
        self.normalise = bool(normalise)

        h = self.radial.atom_sigma / 400.0 if spline_step is None else float(spline_step)
        if not h > 0:
            raise ConfigurationError("spline_step must be > 0")
        grid = np.linspace(0.0, self.radial.cutoff, max(int(np.ceil(self.radial.cutoff / h)) + 1, 11))
        by_angular = {}
        for ell in range(self.radial.l_max + 1):
            spline = Spline(0.0, self.radial.cutoff)
            spline.add_points(grid, self.radial.values(grid, ell), self.radial.values(grid, ell, derivative=True))
            by_angular[ell] = SplinedRadialBasis(spline=spline, max_radial=self.radial.n_max - 1,
                                                 radius=self.radial.cutoff)
        smoothing = ShiftedCosine(width=float(cutoff_transition_width)) if cutoff_transition_width > 0 else Step()
        self.hypers = {
            "cutoff": Cutoff(self.radial.cutoff, smoothing),
            "density": DiracDelta(center_atom_weight=float(central_weight)),
            "basis": Explicit(by_angular=by_angular, spline_accuracy=None),
        }
        self.calculator = SoapPowerSpectrum(**self.hypers)

        sorted_species = sorted(species)
        pairs = [(a, b) for i, a in enumerate(sorted_species) for b in sorted_species[i:]]
        self._pairs = Labels(["neighbor_1_type", "neighbor_2_type"], np.array(pairs, dtype=np.int32))
        self._columns, self._factors = quippy_layout(species, self.radial.n_max, self.radial.l_max)
        self.dimension = len(self._columns) + 1

    def _layout_values(self, block, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """quippy's vectors (n_env, D) of a featomic block and the norms they were divided by."""
        raw = np.asarray(block.values)[:, cols] * self._factors
        norms = np.linalg.norm(raw, axis=1)
        if self.normalise and np.any(norms == 0):
            bad = block.samples.values[int(np.flatnonzero(norms == 0)[0])]
            raise InputError(f"atom {int(bad[1])} of frame {int(bad[0])} has a zero SOAP vector")
        scale = norms if self.normalise else np.ones_like(norms)
        values = np.empty((len(raw), self.dimension))
        values[:, :-1] = raw / scale[:, None]
        values[:, -1] = self.covariance_sigma0
        return values, scale

    def compute_projected(self, frames: Sequence[Atoms], *, gradients: bool = False) -> ProjectedSOAP:
        """Like :meth:`compute` for one centre species, keeping featomic's raw gradients (see
        :class:`ProjectedSOAP`): the layout map is applied to what the gradients are contracted
        with instead of to the gradients."""
        frames = list(frames)
        if len(self.centers) != 1:
            raise ConfigurationError("compute_projected needs exactly one centre species (quippy's Z)")
        for k, atoms in enumerate(frames):
            extra = set(np.unique(atoms.numbers).tolist()) - set(self.species)
            if extra:
                raise InputError(f"frame {k} contains species {sorted(extra)} outside {list(self.species)}")
        d = self.dimension
        tensor = self.calculator.compute(frames, gradients=["positions"] if gradients else None)
        tensor = tensor.keys_to_properties(self._pairs)
        found = [i for i, key in enumerate(tensor.keys) if int(key["center_type"]) == self.centers[0]]
        lookup_cols = None
        if found:
            block = tensor.block(found[0])
            lookup = {tuple(p): i for i, p in enumerate(block.properties.values.tolist())}
            lookup_cols = np.array([lookup[c] for c in self._columns], dtype=np.int64)
        if not found or block.values.shape[0] == 0:
            empty_g = np.zeros((0, 3, 1)) if gradients else None
            return ProjectedSOAP(np.zeros((0, d)), np.zeros((0, 2), dtype=np.int64), np.zeros(0), empty_g,
                                 np.zeros((0, 3), dtype=np.int64) if gradients else None,
                                 lookup_cols if lookup_cols is not None else np.zeros(0, dtype=np.int64),
                                 self._factors, self.normalise)
        values, scale = self._layout_values(block, lookup_cols)
        centers = np.asarray(block.samples.values, dtype=np.int64)[:, :2]
        order = np.lexsort((centers[:, 1], centers[:, 0]))  # frame, then atom: quippy's order
        sorted_already = bool(np.all(order == np.arange(len(order))))
        if not sorted_already:
            values, centers, scale = values[order], centers[order], scale[order]
        grads = gidx = None
        if gradients:
            g = block.gradient("positions")
            gs = np.asarray(g.samples.values, dtype=np.int64)
            grads = np.asarray(g.values)
            rows = gs[:, 0]
            if not sorted_already:
                inverse = np.empty_like(order)
                inverse[order] = np.arange(len(order))
                rows = inverse[rows]
            if np.any(np.diff(rows) < 0):
                gorder = np.argsort(rows, kind="stable")
                rows, gs, grads = rows[gorder], gs[gorder], grads[gorder]
            gidx = np.column_stack([rows, centers[rows, 0], gs[:, 2]])
        return ProjectedSOAP(values, centers, scale, grads, gidx, lookup_cols, self._factors, self.normalise)

    def compute(self, frames: Sequence[Atoms], *, gradients: bool = False) -> QuippySOAPResult:
        """quippy's ``soap`` vectors (and position gradients) of every centre in ``frames``.

        Parameters
        ----------
        frames : sequence of ase.Atoms
        gradients : bool
            Also return d(normalised vector)/d(positions).

        Returns
        -------
        QuippySOAPResult

        Raises
        ------
        InputError
            A frame holds a species outside ``species``, or a centre has an empty
            environment (quippy would divide by a zero norm).
        """
        frames = list(frames)
        for k, atoms in enumerate(frames):
            extra = set(np.unique(atoms.numbers).tolist()) - set(self.species)
            if extra:
                raise InputError(f"frame {k} contains species {sorted(extra)} outside {list(self.species)}")
        tensor = self.calculator.compute(frames, gradients=["positions"] if gradients else None)
        tensor = tensor.keys_to_properties(self._pairs)
        d = self.dimension
        vals, cents, grads, gidx = [], [], [], []
        row0 = 0
        for z in self.centers:
            found = [i for i, key in enumerate(tensor.keys) if int(key["center_type"]) == z]
            if not found:
                continue
            block = tensor.block(found[0])
            if block.values.shape[0] == 0:
                continue
            lookup = {tuple(p): i for i, p in enumerate(block.properties.values.tolist())}
            cols = np.array([lookup[c] for c in self._columns])
            out, scale = self._layout_values(block, cols)
            x = out[:, :-1]
            vals.append(out)
            cents.append(np.asarray(block.samples.values, dtype=np.int64)[:, :2])
            if gradients:
                g = block.gradient("positions")
                gs = np.asarray(g.samples.values, dtype=np.int64)
                dp = np.asarray(g.values)[:, :, cols] * self._factors
                if self.normalise:
                    xi = x[gs[:, 0]]
                    dp = (dp - np.einsum("gad,gd->ga", dp, xi)[:, :, None] * xi[:, None, :]) / scale[gs[:, 0], None, None]
                gout = np.zeros((len(dp), 3, d))
                gout[:, :, :-1] = dp
                grads.append(gout)
                gidx.append(np.column_stack([gs[:, 0] + row0, gs[:, 1], gs[:, 2]]))
            row0 += len(x)
        if not vals:
            return QuippySOAPResult(np.zeros((0, d)), np.zeros((0, 2), dtype=np.int64),
                                    np.zeros((0, 3, d)) if gradients else None,
                                    np.zeros((0, 3), dtype=np.int64) if gradients else None)
        values, centers = np.vstack(vals), np.vstack(cents)
        order = np.lexsort((centers[:, 1], centers[:, 0]))  # frame, then atom: quippy's order
        result = QuippySOAPResult(values[order], centers[order])
        if gradients:
            gidx_all = np.vstack(gidx)
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            gidx_all[:, 0] = inverse[gidx_all[:, 0]]
            gorder = np.lexsort((gidx_all[:, 2], gidx_all[:, 0]))
            result.gradients = np.concatenate(grads)[gorder]
            result.gradient_index = gidx_all[gorder]
        return result


@dataclass
class ProjectedSOAP:
    """quippy's vectors of one centre species with featomic's raw gradients (no layout copy).

    The gradient of quippy's vector q = (P p / |P p|, σ₀) with P the fixed signed selection
    (``columns``, ``factors``) is ∂q = (I − x xᵀ) P ∂p / |P p| (first D − 1 elements; the
    last is constant). Contracting it with vectors V (M × D) needs only P applied to V, so
    the raw gradients ∂p are used as featomic returns them: ``contract`` is one GEMM.

    Attributes
    ----------
    values : (n_env, D) float64
        quippy's vectors (as :class:`QuippySOAPResult`), frame then atom order.
    centers : (n_env, 2) int64
        (frame, atom) of each row.
    norms : (n_env,) float64
        |P p| of each row (1 when not normalised).
    gradients : (n_grad, 3, D_f) float64 or None
        featomic's ∂p/∂r (all D_f power-spectrum elements of the species-pair blocks).
    gradient_index : (n_grad, 3) int64 or None
        (row, frame, atom) of each gradient entry, sorted by row.
    columns : (D - 1,) int64
        featomic element of each of quippy's first D − 1 elements.
    factors : (D - 1,) float64
    normalise : bool
    """

    values: np.ndarray
    centers: np.ndarray
    norms: np.ndarray
    gradients: np.ndarray | None
    gradient_index: np.ndarray | None
    columns: np.ndarray
    factors: np.ndarray
    normalise: bool = True

    def lift(self, V: np.ndarray) -> np.ndarray:
        """Pᵀ V[:, :-1] in featomic's layout, (M, D_f)."""
        out = np.zeros((len(V), self.gradients.shape[-1]))
        out[:, self.columns] = V[:, :-1] * self.factors
        return out

    def contract(self, V: np.ndarray, rows: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """∂q_rows · V for gradient entries ``grads`` (n × 3 × D_f) of instances ``rows``: (n, 3, M)."""
        n, _, Df = grads.shape
        out = (grads.reshape(-1, Df) @ self.lift(V).T).reshape(n, 3, len(V))
        if self.normalise:
            x = self.values[rows]
            gx = np.einsum("gad,gd->ga", grads, self.lift(x))
            out -= gx[:, :, None] * (x[:, :-1] @ V[:, :-1].T)[:, None, :]
            out /= self.norms[rows][:, None, None]
        return out


def featomic_soap_matching_quippy(*, cutoff: float, n_max: int, l_max: int, atom_sigma: float,
                                  species: Sequence[int], cutoff_transition_width: float = 0.5,
                                  central_weight: float = 1.0, covariance_sigma0: float = 0.0,
                                  centers: Sequence[int] | None = None, normalise: bool = True,
                                  spline_step: float | None = None) -> QuippyMatchedSOAP:
    """A featomic SOAP calculator equal to quippy's ``soap`` descriptor with the same arguments.

    The arguments are quippy's (``species`` is ``species_Z`` in quippy's order, ``centers``
    is ``Z``, default all species). ``spline_step`` is the spacing of the tabulated radial
    functions (Å, default ``atom_sigma / 400``: about 2e-13 relative to quippy on the vectors
    and 4e-10 on their gradients; the errors fall as ``spline_step⁴`` and ``spline_step³``).

    Returns
    -------
    QuippyMatchedSOAP
        ``.compute(frames, gradients=...)`` gives quippy's layout; ``.hypers`` are the
        ``featomic.SoapPowerSpectrum`` arguments; :func:`quippy_soap_string` gives the
        matching quippy string.
    """
    return QuippyMatchedSOAP(cutoff=cutoff, n_max=n_max, l_max=l_max, atom_sigma=atom_sigma, species=species,
                             cutoff_transition_width=cutoff_transition_width, central_weight=central_weight,
                             covariance_sigma0=covariance_sigma0, centers=centers, normalise=normalise,
                             spline_step=spline_step)
