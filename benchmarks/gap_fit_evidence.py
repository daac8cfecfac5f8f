"""Designs trained by the user's own trainer: gap_fit learning curves on Zuo Cu/Ni/Mo/Li and EAM-labelled Zr.

Each design is computed (labels hidden) on exactly the GAP of a standard gap_fit recipe
(SOAP cutoff 5, n_max 8, l_max 6, ζ 4, cur_points, default_sigma {σ_E σ_F 0.05 0},
e0 average) and trained by gap_fit with that recipe; test errors come from quippy.

    python benchmarks/gap_fit_evidence.py --systems Mo,Li
    python benchmarks/gap_fit_evidence.py --systems Mo --split families --held-out surface,vacancy
    python benchmarks/gap_fit_evidence.py --goal          # the goal table from the runs written so far

Each run writes ``benchmarks/results/gapfit-<system>[-<tag>]/`` (results.csv, summary.md,
PNGs, goal.json) and its section of docs/benchmarks.md. Data from ``../shared/data``;
exits 0 with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "benchmarks"))

RECIPE = ("gap={{soap cutoff=5.0 n_max=8 l_max=6 atom_sigma=0.5 zeta=4 delta=1.0 covariance_type=dot_product "
          "n_sparse={n_sparse} sparse_method=cur_points}} default_sigma={{{sigma_e} {sigma_f} 0.05 0}} "
          "e0_method=average")
GOAL_FRACTIONS = (0.05, 0.1, 0.2)


def load_system(name: str, split: str, held_out: list[str]):
    """(pool, {test name: frames}) of a system, or None when its data are absent."""
    import ase.io

    if name == "Zr":
        from zr_transfer import EAM_FILE, zr_sets

        if not EAM_FILE.exists():
            return None
        return zr_sets(200, 50)
    train_path, test_path = DATA / "zuo2020" / f"{name}_train.xyz", DATA / "zuo2020" / f"{name}_test.xyz"
    if not train_path.exists():
        return None
    train, test = ase.io.read(train_path, index=":"), ase.io.read(test_path, index=":")
    if split == "random":
        return train, {"test": test}
    from mlipdoe.bench.families import frame_families

    fam_train, fam_test = frame_families(train), frame_families(test)
    pool = [a for a, f in zip(train, fam_train) if f not in held_out]
    in_dist = [a for a, f in zip(test, fam_test) if f not in held_out]
    off = [a for a, f in zip(train + test, fam_train + fam_test) if f in held_out]
    return pool, {"test": in_dist, "held_out": off}


def goal_rows(result, default: str, test_set: str) -> list[dict]:
    """The default strategy against the random median and FPS at 5, 10 and 20 % of the pool."""
    from mlipdoe.bench.learning_curve import _aggregate, data_efficiency, variants_run

    budgets = sorted({r["n"] for r in result.rows if r["strategy"] != "full"})
    out = []
    for variant in variants_run(result):
        for frac in GOAL_FRACTIONS:
            n = min(budgets, key=lambda b: abs(b / result.n_pool - frac))
            row = {"variant": variant, "fraction": frac, "n": n, "test_set": test_set}
            for key in ("energy_rmse", "force_rmse"):
                d = _aggregate(result, test_set, default, n, key, variant)
                r = _aggregate(result, test_set, "random", n, key, variant)
                f = _aggregate(result, test_set, "fps", n, key, variant)
                row[key] = {"default": d and d[0], "random_median": r and r[0], "fps": f and f[0]}
            out.append(row)
        for key in ("energy_rmse", "force_rmse"):
            rel, ratio = data_efficiency(result, default, key, test_set=test_set, variant=variant)
            out.append({"variant": variant, "data_efficiency": key, "test_set": test_set, "relation": rel,
                        "ratio": ratio})
    return out


def goal_markdown(folder: Path, default: str) -> str:
    """One table over every goal.json under ``folder``: ✓ where the default is ≤ both references."""
    lines = [f"Default strategy `{default}` against the random median (5 seeds) and FPS, gap_fit training "
             "(its own sparse points unless marked). Each cell: default / random median / FPS; ✓ when the default "
             "is ≤ both. Energy RMSE in meV/atom, force RMSE in eV/Å.", "",
             "| system | test set | n (% pool) | energy | force |", "|---|---|---|---|---|"]
    eff = ["", "**data-efficiency ratio** (DFT atoms random needs for its median error at 20 %, over the "
           "default's; goal ≥ 1.5)", "", "| system | test set | energy | force |", "|---|---|---|---|"]
    for path in sorted(folder.glob("gapfit-*/goal.json")):
        goal = json.loads(path.read_text())
        if goal["default"] != default:
            continue
        name = path.parent.name.removeprefix("gapfit-")
        effs = {}
        for row in goal["rows"]:
            tag = name + ("" if row["variant"] == "gap_fit" else f" ({row['variant']} sparse points)")
            if "data_efficiency" in row:
                rel = "" if row["relation"] == "=" else row["relation"]
                effs.setdefault((tag, row["test_set"]), {})[row["data_efficiency"]] = f"{rel}{row['ratio']:.2f}"
                continue
            cells = []
            for key, scale, fmt in (("energy_rmse", 1000.0, "{:.2f}"), ("force_rmse", 1.0, "{:.3f}")):
                v = row[key]
                if v["default"] is None or v["random_median"] is None or v["fps"] is None:
                    cells.append("")
                    continue
                ok = v["default"] <= v["random_median"] and v["default"] <= v["fps"]
                cells.append(" / ".join(fmt.format(v[k] * scale) for k in ("default", "random_median", "fps"))
                             + (" ✓" if ok else " ✗"))
            lines.append(f"| {tag} | {row['test_set']} | {row['n']} ({100 * row['fraction']:.0f} %) | "
                         + " | ".join(cells) + " |")
        for (tag, test_set), d in effs.items():
            eff.append(f"| {tag} | {test_set} | {d.get('energy_rmse', '')} | {d.get('force_rmse', '')} |")
    return "\n".join(lines + eff) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="Mo", help="comma-separated subset of Cu,Ni,Mo,Li,Zr")
    parser.add_argument("--fractions", default="0.02,0.05,0.1,0.2,0.4", help="budgets as fractions of the pool")
    parser.add_argument("--strategies", default="i_forces,d,i,random,fps,cur,quests")
    parser.add_argument("--default", default="i_forces", help="the strategy the goal table judges")
    parser.add_argument("--n-random", type=int, default=5)
    parser.add_argument("--n-sparse", type=int, default=300)
    parser.add_argument("--sigma-energy", type=float, default=0.002)
    parser.add_argument("--sigma-force", type=float, default=0.1)
    parser.add_argument("--sparse-points", default="gap_fit", help="gap_fit and/or design")
    parser.add_argument("--split", choices=("random", "families"), default="random",
                        help="random: Zuo's train/test split; families: hold out --held-out families")
    parser.add_argument("--held-out", default="surface,vacancy", help="families held out with --split families")
    parser.add_argument("--workers", type=int, default=2, help="gap_fit runs at a time")
    parser.add_argument("--full", action="store_true", help="also train on the whole pool")
    parser.add_argument("--tag", default="", help="suffix of the results folder and docs section")
    parser.add_argument("--goal", action="store_true", help="only rewrite the goal table from the results")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    from zuo import DOCS_HEADER

    from mlipdoe.bench import BenchmarkConfig, run_benchmark, summary_markdown, update_markdown_section, write_outputs
    from mlipdoe.gap_spec import parse_gap_fit_args

    command = "python benchmarks/gap_fit_evidence.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.goal:
        text = "## Goal check: default strategy vs random and FPS with gap_fit training\n\nGenerated by:\n\n```\n" \
               f"{command}\n```\n\n" + goal_markdown(args.out, args.default)
        update_markdown_section(args.docs, "gapfit-goal", text, header=DOCS_HEADER)
        print(text)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    spec = parse_gap_fit_args(RECIPE.format(n_sparse=args.n_sparse, sigma_e=args.sigma_energy,
                                            sigma_f=args.sigma_force))
    held_out = [f.strip() for f in args.held_out.split(",") if f.strip()]
    for system in [s.strip() for s in args.systems.split(",") if s.strip()]:
        data = load_system(system, args.split, held_out)
        if data is None:
            print(f"[{system}] skipped: its data are not in {DATA}")
            continue
        pool, tests = data
        budgets = sorted({max(1, round(f * len(pool))) for f in map(float, args.fractions.split(","))})
        config = BenchmarkConfig(budgets=budgets, strategies=[s.strip() for s in args.strategies.split(",")],
                                 n_random=args.n_random, gap_fit=spec, engine="gap_fit",
                                 sparse_variants=tuple(args.sparse_points.split(",")), workers=args.workers,
                                 include_full=args.full)
        t0 = time.perf_counter()
        result = run_benchmark(pool, tests, config, log=lambda m: print(f"[{system}] {m}", flush=True))
        split = "" if args.split == "random" else f"-families-{'+'.join(held_out)}"
        name = f"gapfit-{system}{split}" + (f"-{args.tag}" if args.tag else "")
        tests_text = ", ".join(f"{k} {len(v)} frames" for k, v in tests.items())
        title = f"gap_fit training — {system}{split} (pool {len(pool)} frames; {tests_text})" + (
            f" — {args.tag}" if args.tag else "")
        folder = args.out / name
        paths = write_outputs(result, folder, title=title, command=command)
        rows = [r for t in result.test_sets for r in goal_rows(result, args.default, t)]
        (folder / "goal.json").write_text(json.dumps({"default": args.default, "rows": rows}, indent=1,
                                                     default=lambda x: None if np.isnan(x) else x))
        text = summary_markdown(result, title=title, command=command)
        text += f"\nFiles: `{paths['csv'].relative_to(REPO)}` and the PNGs beside it.\n"
        update_markdown_section(args.docs, name, text, header=DOCS_HEADER)
        print(text)
        print(f"[{system}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
