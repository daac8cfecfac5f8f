"""The independent power-spectrum components against featomic's full power spectrum."""

import ase.build
import numpy as np
import pytest

from mlipdoe.descriptors import SOAP, make_descriptor

pytest.importorskip("featomic")


def full_spectrum(soap, frames, gradients):
    """featomic's full power spectrum with every (n₁, n₂), the pairs moved to properties."""
    from featomic import SoapPowerSpectrum
    from metatensor import Labels

    sp = soap.species
    pairs = np.array([(a, b) for i, a in enumerate(sp) for b in sp[i:]], dtype=np.int32)
    tensor = SoapPowerSpectrum(**soap.featomic_hypers()).compute(frames, gradients=gradients)
    return {int(key["center_type"]): block
            for key, block in tensor.keys_to_properties(Labels(["neighbor_1_type", "neighbor_2_type"], pairs)).items()}


def oxide_frames():
    a = ase.build.bulk("ZrO2", "fluorite", a=5.1) * (2, 1, 1)
    a.rattle(0.05, seed=1)
    b = ase.build.bulk("Zr", "hcp", a=3.2) * (2, 2, 1)  # no O: its centres have no O neighbours
    b.rattle(0.05, seed=2)
    c = a.copy()
    c.numbers[0] = 40
    c.rattle(0.1, seed=3)
    return [a, b, c]


def zr_frames():
    out = []
    for k in range(3):
        a = ase.build.bulk("Zr", "hcp", a=3.23) * (2, 2, 1 + k)
        a.rattle(0.05, seed=k)
        out.append(a)
    return out


@pytest.mark.parametrize("case", ["one species", "two species"])
def test_kernel_values_and_gradient_contractions_equal_the_full_power_spectrum(case):
    frames, soap = ((zr_frames(), SOAP(cutoff=4.5, n_max=4, l_max=3, species=(40,))) if case == "one species"
                    else (oxide_frames(), SOAP(cutoff=4.0, n_max=3, l_max=2, species=(8, 40))))
    ours = make_descriptor(soap).compute(frames, gradients=["positions", "strain"])
    full = full_spectrum(soap, frames, ["positions", "strain"])
    n_pairs = len(soap.species) * (len(soap.species) + 1) // 2
    same = len(soap.species) * (soap.l_max + 1) * soap.n_max * (soap.n_max + 1) // 2
    cross = (n_pairs - len(soap.species)) * (soap.l_max + 1) * soap.n_max**2
    assert ours.dimension == same + cross < n_pairs * (soap.l_max + 1) * soap.n_max**2
    for z, block in full.items():
        P = np.asarray(block.values)
        mine = ours.blocks[z]
        assert np.array_equal(np.asarray(block.samples.values)[:, 0], mine.frame)
        assert np.array_equal(np.asarray(block.samples.values)[:, 1], mine.atom)
        norms = np.linalg.norm(P, axis=1)
        X = P / norms[:, None]
        np.testing.assert_allclose(mine.norms, norms, rtol=1e-13)
        assert np.abs(mine.values @ mine.values.T - X @ X.T).max() < 1e-13  # every kernel value
        raw = mine.values * mine.norms[:, None]
        for name in ("positions", "strain"):
            G_full, s_full = np.asarray(block.gradient(name).values), np.asarray(block.gradient(name).samples.values)
            G, s = mine.gradients[name]
            if mine.gradient_scale is not None:
                G = G * mine.gradient_scale
            assert np.array_equal(s, s_full)
            # the derivative of every dot product with a fixed vector of the same space: p_i·dp and Σ_k p_k·dp
            for u_full, u in ((P[s_full[:, 0]], raw[s[:, 0]]), (np.broadcast_to(P.sum(0), P[s_full[:, 0]].shape),
                                                              np.broadcast_to(raw.sum(0), raw[s[:, 0]].shape))):
                ref = np.einsum("g...d,gd->g...", G_full, u_full)
                got = np.einsum("g...d,gd->g...", G, u)
                assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()
