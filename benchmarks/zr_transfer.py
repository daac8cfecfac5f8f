"""Zirconium transfer benchmark: do optimal designs extrapolate better than representative samples?

hcp Zr from ``mlipdoe.generate``, labelled by the Mendelev–Ackland EAM potential
(``<repo>/../shared/data/eam/Zr_mm.eam.fs`` through ``ase.calculators.eam.EAM``):

- pool: Sobol strains within ±2 %, rattled 0.02 Å (labels hidden from the selectors);
- in-sample test: the same distribution, other seed;
- off-sample tests: strains between 2 and 5 % ("strain_2-5"), and ±2 % cells with a
  vacancy ("vacancy").

Also compares the built-in fit with the real gap_fit (same frames, hypers, sparse points).
Exits 0 with a message when the EAM file is absent.

    python benchmarks/zr_transfer.py
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EAM_FILE = REPO.parent / "shared" / "data" / "eam" / "Zr_mm.eam.fs"
sys.path.insert(0, str(REPO / "benchmarks"))


def label(frames, calc):
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        a.info["energy"] = float(a.get_potential_energy())
        a.arrays["force"] = a.get_forces()
        a.calc = None
        out.append(a)
    return out


def zr_sets(n_pool: int, n_test: int):
    """EAM-labelled hcp Zr: the pool (±2 % strain) and the tests in_sample, strain_2-5 and vacancy."""
    from ase.calculators.eam import EAM

    from mlipdoe.generate import ZR_HCP_A, ZR_HCP_C, generate_strained

    calc = EAM(potential=str(EAM_FILE))
    common = dict(structure="hcp", a=ZR_HCP_A, c=ZR_HCP_C, supercell=(2, 2, 2), rattle=0.02)
    pool = label(generate_strained("Zr", n_frames=n_pool, max_strain=0.02, seed=0, **common), calc)
    tests = {
        "in_sample": label(generate_strained("Zr", n_frames=n_test, max_strain=0.02, seed=101, **common), calc),
        "strain_2-5": label(generate_strained("Zr", n_frames=n_test, min_strain=0.02, max_strain=0.05, seed=102,
                                              config_type="strain_2-5", **common), calc),
        "vacancy": label(generate_strained("Zr", n_frames=n_test, max_strain=0.02, vacancies=1, seed=103,
                                           config_type="vacancy", **common), calc),
    }
    return pool, tests


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-pool", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--fractions", default="0.05,0.1,0.2,0.4")
    parser.add_argument("--strategies", default="random,fps,cur,d,i,maximin,d_forces,i_forces")
    parser.add_argument("--n-random", type=int, default=5)
    parser.add_argument("--n-sparse", type=int, default=100)
    parser.add_argument("--n-max", type=int, default=8)
    parser.add_argument("--l-max", type=int, default=6)
    parser.add_argument("--sigma-energy", type=float, default=0.001)
    parser.add_argument("--sigma-force", type=float, default=0.1)
    parser.add_argument("--engine-check", action="store_true", help="also compare built-in fit and gap_fit")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)  # the results root; each run writes a folder in it
    if not EAM_FILE.exists():
        print(f"skipped: {EAM_FILE} not found (the EAM labeller lives in ../shared/data)")
        return 0
    from zuo import DOCS_HEADER

    from mlipdoe.bench import (
        BenchmarkConfig,
        run_benchmark,
        summary_markdown,
        update_markdown_section,
        write_outputs,
    )
    from mlipdoe.descriptors import SOAP
    from mlipdoe.hypers import Noise

    command = "python benchmarks/zr_transfer.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    pool, tests = zr_sets(args.n_pool, args.n_test)
    print(f"generated and labelled {args.n_pool} + 3 × {args.n_test} frames in {time.perf_counter() - t0:.0f} s")
    soap = SOAP(cutoff=5.0, n_max=args.n_max, l_max=args.l_max, atom_sigma=0.5)
    noise = Noise(energy=args.sigma_energy, force=args.sigma_force)
    pool_n = len(pool)
    budgets = sorted({max(1, round(f * pool_n)) for f in map(float, args.fractions.split(","))})
    config = BenchmarkConfig(budgets=budgets, strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
                             n_random=args.n_random, soap=soap, noise=noise, n_sparse=args.n_sparse)
    result = run_benchmark(pool, tests, config, log=lambda m: print(f"[Zr] {m}", flush=True))
    title = (f"Zr transfer (EAM labels): pool {pool_n} frames within ±2 % strain; tests in-sample, "
             f"strain 2–5 %, vacancy ({args.n_test} frames each)")
    write_outputs(result, args.out / "zr-transfer", title=title, command=command)
    text = summary_markdown(result, title=title, command=command)
    if args.engine_check:
        from mlipdoe.fit import compare_engines

        t1 = time.perf_counter()
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:          # gap_fit inputs/outputs are scratch
            res = compare_engines(pool[:60], tests["in_sample"][:20], soap=soap, noise=noise,
                                  n_sparse=args.n_sparse, output=tmp)
        text += (
            "\n### Built-in fit vs gap_fit (same 60 frames, hypers, sparse points; 20 in-sample test frames)\n\n"
            "| comparison | test energy RMSE (meV/atom) | rms difference to gap_fit |\n|---|---|---|\n"
            f"| built-in on featomic SOAP, energies + forces | {1e3 * res['featomic_energy_rmse']:.4f} | "
            f"{1e3 * res['featomic_vs_gap_fit_energy']:.4f} meV/atom, {res.get('featomic_vs_gap_fit_force', float('nan')):.4f} eV/Å |\n"
            f"| gap_fit (quippy SOAP), energies + forces | {1e3 * res['gap_fit_energy_rmse']:.4f} | — |\n"
            f"| built-in on quippy SOAP vectors, energies only | {1e3 * res['quippy_soap_energy_rmse']:.4f} | "
            f"{1e3 * res['quippy_soap_vs_gap_fit_energy']:.2e} meV/atom (vs gap_fit energies only) |\n\n"
            f"({time.perf_counter() - t1:.0f} s.)\n")
    update_markdown_section(args.docs, "zr-transfer", text, header=DOCS_HEADER)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
