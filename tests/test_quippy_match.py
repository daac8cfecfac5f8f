"""featomic configured as GAP's ``soap`` (mlipdoe.descriptors.quippy_match) against quippy itself,
numerical quadrature, finite differences and featomic's own full power spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
from ase.build import bulk
from scipy.special import gammaln

from mlipdoe.descriptors.quippy_match import (
    GapSoapRadial,
    featomic_soap_matching_quippy,
    quippy_layout,
    quippy_soap_string,
)
from mlipdoe.exceptions import ConfigurationError, InputError
from mlipdoe.generate import zr_example

ZR = {"cutoff": 5.0, "cutoff_transition_width": 0.5, "n_max": 6, "l_max": 4, "atom_sigma": 0.5, "species": [40]}
ZRO2 = {"cutoff": 4.5, "cutoff_transition_width": 0.6, "n_max": 5, "l_max": 4, "atom_sigma": 0.45,
        "species": [40, 8]}  # quippy's order, deliberately not sorted


@pytest.fixture(scope="module")
def zr_frames():
    return zr_example(3, seed=1)


@pytest.fixture(scope="module")
def zro2_frames():
    atoms = bulk("ZrO2", "fluorite", a=5.07, cubic=True)
    atoms.rattle(0.1, seed=4)
    return [atoms]


def test_overlap_closed_form_against_quadrature():
    rad = GapSoapRadial(5.0, 5, 3, 0.5)
    rb, a = rad.r_basis, rad.alpha
    s = rad.overlap()
    for i, j in [(0, 0), (1, 3), (4, 4), (0, 4)]:
        ref = scipy.integrate.quad(lambda r, ri=rb[i], rj=rb[j]: r**2 * np.exp(-a * (r - ri) ** 2 - a * (r - rj) ** 2),
                                   0, rb[-1] + 20 * rad.atom_sigma, points=[rb[i], rb[j]], limit=200)[0]
        assert s[i, j] == pytest.approx(ref, rel=1e-10)


def test_grid_functions_against_bessel_series_and_derivative_against_finite_differences():
    rad = GapSoapRadial(4.0, 6, 5, 0.4)
    r = np.array([0.0, 0.3, 1.7, 3.9])
    rb, a = rad.r_basis, rad.alpha
    for ell in range(rad.l_max + 1):
        # exp(-α(r²+ρ²)) i_l(x) with i_l(x) = √π/2 Σ_k (x/2)^(2k+l) / (k! Γ(k+l+3/2)), summed directly
        x = 2 * a * r[:, None] * rb[None, :]
        k = np.arange(600)[:, None, None]
        log_terms = ((2 * k + ell) * np.log(np.maximum(x / 2, 1e-300)) - gammaln(k + 1) - gammaln(k + ell + 1.5)
                     - a * (r[:, None] ** 2 + rb[None, :] ** 2))
        ref = np.sqrt(np.pi) / 2 * np.exp(log_terms).sum(axis=0)
        if ell == 0:
            ref = np.where(x == 0, np.exp(-a * (r[:, None] ** 2 + rb[None, :] ** 2)), ref)
        np.testing.assert_allclose(rad.grid_functions(r, ell), ref, rtol=1e-11, atol=1e-300)

        h = 1e-5
        rr = r[1:]  # central differences away from r = 0
        fd = (rad.values(rr + h, ell) - rad.values(rr - h, ell)) / (2 * h)
        np.testing.assert_allclose(rad.values(rr, ell, derivative=True), fd, rtol=1e-6,
                                   atol=1e-8 * np.abs(fd).max())


def test_layout_keeps_every_dot_product(zro2_frames):
    """The signed selection is an isometry on featomic's vectors: GAP-layout dot products equal
    featomic's own full-vector dot products."""
    import featomic
    from metatensor import Labels

    hyp = {"cutoff": {"radius": 4.0, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
           "density": {"type": "Gaussian", "width": 0.5},
           "basis": {"type": "TensorProduct", "max_angular": 3, "radial": {"type": "Gto", "max_radial": 3}}}
    tensor = featomic.SoapPowerSpectrum(**hyp).compute(zro2_frames)
    pairs = Labels(["neighbor_1_type", "neighbor_2_type"], np.array([(8, 8), (8, 40), (40, 40)], dtype=np.int32))
    tensor = tensor.keys_to_properties(pairs)
    columns, factors = quippy_layout([40, 8], n_max=4, l_max=3)
    assert len(columns) == len(set(columns)) == (8 * 9 // 2) * 4
    for block in tensor.blocks():
        full = np.asarray(block.values)
        lookup = {tuple(p): i for i, p in enumerate(block.properties.values.tolist())}
        mapped = full[:, [lookup[c] for c in columns]] * factors
        np.testing.assert_allclose(mapped @ mapped.T, full @ full.T, rtol=1e-12, atol=1e-14 * np.abs(full).max() ** 2)


def _quippy(frames, hypers):
    descriptors = pytest.importorskip("quippy.descriptors")
    desc = descriptors.Descriptor(quippy_soap_string(**hypers))
    values, grads, row0 = [], {}, 0
    for f, atoms in enumerate(frames):
        out = desc.calc(atoms, grad=True)
        values.append(np.asarray(out["data"]))
        row_of = {int(c) - 1: n for n, c in enumerate(np.atleast_1d(out["ci"]))}
        for g, (centre, atom) in zip(out["grad_data"], out["grad_index_0based"]):
            key = (row0 + row_of[int(centre)], f, int(atom))
            grads[key] = grads.get(key, 0.0) + np.asarray(g)  # periodic images summed onto the atom
        row0 += len(out["data"])
    return np.vstack(values), grads


@pytest.mark.parametrize("case", ["zr", "zro2", "zro2_options", "zro2_unnormalised"])
def test_vectors_and_gradients_equal_quippy(case, zr_frames, zro2_frames):
    frames, hypers = {
        "zr": (zr_frames, ZR),
        "zro2": (zro2_frames, ZRO2),
        "zro2_options": (zro2_frames, {**ZRO2, "central_weight": 0.4, "covariance_sigma0": 0.3, "centers": [8]}),
        "zro2_unnormalised": (zro2_frames, {**ZRO2, "normalise": False}),
    }[case]
    q, qgrads = _quippy(frames, hypers)
    result = featomic_soap_matching_quippy(**hypers).compute(frames, gradients=True)
    assert result.values.shape == q.shape
    # the spline error is ~1e-13 relative; quippy's own Bessel recurrences are good to ~1e-14
    scale = np.linalg.norm(q, axis=1).max()
    assert np.max(np.linalg.norm(result.values - q, axis=1)) < 1e-10 * scale
    ours = {tuple(k): g for k, g in zip(result.gradient_index.tolist(), result.gradients)}
    assert set(ours) == set(qgrads)
    gscale = max(np.abs(g).max() for g in qgrads.values())
    err = max(np.abs(ours[k] - g).max() for k, g in qgrads.items())
    assert err < 1e-8 * gscale  # derivative of a cubic Hermite spline: h³ ≈ 4e-10 relative here


def test_gradients_against_finite_differences(zro2_frames):
    """Independent of quippy: d(normalised vector)/dr of one atom by central differences."""
    matched = featomic_soap_matching_quippy(**ZRO2)
    atoms = zro2_frames[0]
    res = matched.compute([atoms], gradients=True)
    j, h = 3, 1e-5
    for axis in range(3):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[j, axis] += h
        minus.positions[j, axis] -= h
        fd = (matched.compute([plus]).values - matched.compute([minus]).values) / (2 * h)
        an = np.zeros_like(fd)
        rows = res.gradient_index[:, 2] == j
        an[res.gradient_index[rows, 0]] = res.gradients[rows, axis]
        np.testing.assert_allclose(an, fd, atol=1e-7 * np.abs(fd).max())


def test_refuses_bad_input(zro2_frames):
    with pytest.raises(ConfigurationError):
        featomic_soap_matching_quippy(**{**ZR, "species": [40, 40]})
    with pytest.raises(ConfigurationError):
        featomic_soap_matching_quippy(**{**ZR, "centers": [8]})
    with pytest.raises(InputError, match="outside"):
        featomic_soap_matching_quippy(**ZR).compute(zro2_frames)
