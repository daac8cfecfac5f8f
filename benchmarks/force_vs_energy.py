"""Force-aware vs energy-only D-optimal designs, scored with EAM labels on held-out frames.

For each scenario (cell sizes, rattle amplitude, σ_F/σ_E, budget) a pool and a test set of
strained, rattled hcp Zr are generated and labelled with the Mendelev EAM potential
(``/work/shared/data/eam/Zr_mm.eam.fs``). Three designs of equal size are chosen from the
pool with the SAME sparse points:

- ``D(E)``   : greedy D-optimal on energy rows only,
- ``D(E+F)`` : greedy D-optimal on energy + force rows (compressed factors, mlipdoe.rows),
- ``random`` : median over 3 seeds,

averaged over ``--seeds`` independent pool/test draws (with the count of draws where
D(E+F) beat D(E)).

Every design is then fitted the way gap_fit would fit it — on energies AND forces of the
chosen frames, same σ's — with the posterior mean in whitened coordinates
β = F̃⁻¹ Σ Ψ_sᵀ Λ_s⁻¹ y_s (average per-atom energy subtracted first, gap_fit
``e0_method=average``), and scored on the test set: energy RMSE (meV/atom) and force RMSE
(eV/Å).

    python benchmarks/force_vs_energy.py            # all scenarios (~ a few minutes)
    python benchmarks/force_vs_energy.py --quick    # base scenario only
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from mlipdoe.criteria import make_criterion
from mlipdoe.descriptors import SOAP
from mlipdoe.generate import generate_strained
from mlipdoe.hypers import Noise
from mlipdoe.model import build_model
from mlipdoe.model.rows import compress_rows, posterior_mean
from mlipdoe.optimizers import greedy

EAM_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "eam" / "Zr_mm.eam.fs"
SMALL = (2, 2, 2)  # 16 atoms
LARGE = (3, 3, 3)  # 54 atoms
MIXED = [(2, 2, 1), (2, 2, 2), (3, 3, 2), (3, 3, 3), (4, 4, 3)]  # 8..96 atoms
SOAP_HYPERS = SOAP(cutoff=5.0, n_max=6, l_max=4)


def make_frames(cells, n, rattle, seed):
    cells = [cells] if isinstance(cells[0], int) else list(cells)
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(cells), size=n)
    out = [None] * n
    for k, cell in enumerate(cells):
        where = np.flatnonzero(pick == k)
        if len(where):
            group = generate_strained("Zr", n_frames=len(where), supercell=cell, rattle=rattle, max_strain=0.03,
                                      seed=seed * 10 + k)
            for i, a in zip(where, group):
                out[i] = a
    return out


def eam_labels(frames):
    from ase.calculators.eam import EAM

    calc = EAM(potential=str(EAM_PATH))
    energies, forces = [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces().copy())
    return np.array(energies), forces


def with_noise(base_model, rows, sigma_e, sigma_f, forces: bool):
    """The base model re-weighted for (σ_E, σ_F), with or without force rows in the factors."""
    noise = Noise(energy=sigma_e, force=sigma_f)
    n = base_model.n_atoms
    model = dataclasses.replace(base_model, noise=noise, energy_variance=noise.energy_variance(n))
    if forces:
        factors = [compress_rows(reweight(r, sigma_e, sigma_f).scaled) for r in rows]
        model = dataclasses.replace(model, observations=("energy", "forces"), factors=factors)
    return model


def reweight(rows, sigma_e, sigma_f):
    var = np.where(rows.kind == "energy", sigma_e**2 * rows.n_atoms, sigma_f**2)
    return dataclasses.replace(rows, variance=var)


def design(model, n, criterion="d", seed=0):
    crit = make_criterion(criterion).initialize(model, seed=seed)
    return greedy(crit, n, available=np.ones(model.n_frames, dtype=bool)).selected


def fit_and_score(selected, rows, energies, forces, test_rows, test_e, test_f, sigma_e, sigma_f, M):
    n_sel = np.array([rows[s].n_atoms for s in selected])
    e0 = float(np.sum(energies[selected]) / np.sum(n_sel))  # e0_method=average
    blocks = [reweight(rows[s], sigma_e, sigma_f) for s in selected]
    labels = [np.concatenate([[energies[s] - e0 * rows[s].n_atoms], forces[s].reshape(-1)]) for s in selected]
    beta = posterior_mean(blocks, labels, M)
    e_err, f_err = [], []
    for r, e, f in zip(test_rows, test_e, test_f):
        pred = r.psi @ beta
        e_err.append((pred[0] + e0 * r.n_atoms - e) / r.n_atoms)
        f_err.append(pred[1:] - f.reshape(-1))
    return 1e3 * np.sqrt(np.mean(np.square(e_err))), np.sqrt(np.mean(np.square(np.concatenate(f_err))))


def run_scenario(name, cells, rattle, ratios, budgets, *, n_pool, n_test, n_sparse, seeds, sigma_e=0.001):
    """Mean test RMSEs over pool/test seeds of D(E), D(E+F) and random designs."""
    t0 = time.perf_counter()
    # res[(ratio, n)] -> list over seeds of (E rmse x3, F rmse x3, atoms D(E), atoms D(E+F))
    res: dict = {}
    sizes = None
    for seed in seeds:
        pool = make_frames(cells, n_pool, rattle, seed)
        test = make_frames(cells, n_test, rattle, seed + 1000)
        energies, forces = eam_labels(pool)
        test_e, test_f = eam_labels(test)
        base = build_model(pool, soap=SOAP_HYPERS, n_sparse=n_sparse, seed=seed)
        rows = base.observation_rows(pool, observations=("energy", "forces"))
        test_rows = base.observation_rows(test, observations=("energy", "forces"))
        n_atoms = base.n_atoms
        sizes = (n_atoms.min(), n_atoms.max(), base.M)
        for ratio in ratios:
            sigma_f = sigma_e * ratio
            m_e = with_noise(base, rows, sigma_e, sigma_f, forces=False)
            m_f = with_noise(base, rows, sigma_e, sigma_f, forces=True)
            for n in budgets:
                def score(sel):
                    return fit_and_score(sel, rows, energies, forces, test_rows, test_e, test_f, sigma_e, sigma_f,
                                         base.M)
                s_e, s_f = design(m_e, n), design(m_f, n)
                r_e, r_f = score(s_e), score(s_f)
                rnd = np.median([score(design(m_e, n, "random", seed=k)) for k in range(3)], axis=0)
                res.setdefault((ratio, n), []).append(
                    [r_e[0], r_f[0], rnd[0], r_e[1], r_f[1], rnd[1], n_atoms[s_e].mean(), n_atoms[s_f].mean()])
    print(f"\n== {name}: pool {n_pool} frames ({sizes[0]}-{sizes[1]} atoms), rattle {rattle} Å, M = {sizes[2]}, "
          f"test {n_test} frames, mean over {len(seeds)} seeds  [{time.perf_counter() - t0:.0f} s]")
    print(f"{'σF/σE':>6} {'n':>3} | {'E RMSE meV/at: D(E)':>20} {'D(E+F)':>7} {'random':>7} {'E+F wins':>8} | "
          f"{'F RMSE eV/Å: D(E)':>18} {'D(E+F)':>7} {'random':>7} {'E+F wins':>8} | atoms/frame D(E) D(E+F)")
    out = []
    for (ratio, n), vals in res.items():
        v = np.array(vals)
        m = v.mean(axis=0)
        we = int(np.sum(v[:, 1] < v[:, 0]))
        wf = int(np.sum(v[:, 4] < v[:, 3]))
        print(f"{ratio:6.0f} {n:3d} | {m[0]:20.3f} {m[1]:7.3f} {m[2]:7.3f} {f'{we}/{len(v)}':>8} | "
              f"{m[3]:18.4f} {m[4]:7.4f} {m[5]:7.4f} {f'{wf}/{len(v)}':>8} | {m[6]:9.1f} {m[7]:6.1f}")
        out.append(dict(scenario=name, ratio=ratio, n=n, mean=m.tolist()))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-pool", type=int, default=100)
    p.add_argument("--n-test", type=int, default=30)
    p.add_argument("--n-sparse", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3, help="pool/test seeds averaged per scenario")
    args = p.parse_args(argv)
    if not EAM_PATH.exists():
        raise SystemExit(f"EAM potential not found at {EAM_PATH}")
    seeds = list(range(args.seeds))
    kw = dict(n_pool=args.n_pool, n_test=args.n_test, n_sparse=args.n_sparse, seeds=seeds)
    t0 = time.perf_counter()
    budgets = [5, 10, 20]
    run_scenario("base: 16-atom cells, σ_F/σ_E varied", SMALL, 0.05, [10, 100, 1000], budgets, **kw)
    if not args.quick:
        run_scenario("small rattle, 16-atom cells", SMALL, 0.01, [100], budgets, **kw)
        run_scenario("large rattle, 16-atom cells", SMALL, 0.15, [100], budgets, **kw)
        run_scenario("54-atom cells", LARGE, 0.05, [100], budgets, **kw)
        run_scenario("mixed sizes 8-96 atoms", MIXED, 0.05, [10, 100], budgets, **kw)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
