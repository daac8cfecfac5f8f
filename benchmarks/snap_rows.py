"""SNAP design rows: ``snap_rows`` against the bare LAMMPS calls on the same frames.

    python benchmarks/snap_rows.py [--n-frames 200] [--twojmax 6 8] [--repeats 3]

Frames: ``mlipdoe.generate.zr_example`` (16-atom triclinic hcp Zr cells). For each 2J and
each mode (energy, forces and virials; energy alone) prints ms/frame of

- ``bare``: the LAMMPS commands alone, on boxes and positions converted beforehand —
  delete the atoms, reset the box, create the atoms (one library call), (re)define
  ``compute snap``, a new timestep, ``run 0``, copy the global array (energy alone: the per-atom
  ``compute sna/atom`` array);
- ``snap_rows``: the whole function (cell conversion, species lookup, the same LAMMPS
  work, rotation of force/virial rows back, column layout), one instance for all frames;

and their ratio (target ≤ 1.2). Best of ``--repeats`` runs, bare and snap_rows alternating.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np

from mlipdoe.generate import zr_example
from mlipdoe.model.linear import SnapBasis, lammps_frame, load_lammps, snap_rows

ARGS = ["-log", "none", "-screen", "none", "-nocite"]


def bare_instance(lammps, basis, species):
    lmp = lammps.lammps(cmdargs=list(ARGS))
    lmp.commands_list([
        "units metal", "atom_style atomic", "atom_modify map array sort 0 0.0", "boundary p p p",
        "region box prism 0 1 0 1 0 1 0 0 0", f"create_box {len(species)} box", "mass * 1.0",
        f"pair_style zero {basis.cutoff(species) * (1 + 1e-9) + 1e-9!r}", "pair_coeff * *", "neighbor 0.1 bin",
        f"compute sna all sna/atom {basis.compute_args(species)}",
    ])
    return lmp


def create_atoms(lmp, ids, types, x):
    fn = lmp.lib.lammps_create_atoms
    tag = lmp.c_tagint
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(tag), ctypes.POINTER(ctypes.c_int),
                   ctypes.POINTER(ctypes.c_double), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return fn(lmp.lmp, len(types), ids.ctypes.data_as(ctypes.POINTER(tag)),
              types.ctypes.data_as(ctypes.POINTER(ctypes.c_int)),
              x.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), None, None, 0)


def bare(lammps, lmp, prepared, basis, species, *, snap: bool):
    args = basis.compute_args(species)
    defined = False
    out = []
    t0 = time.perf_counter()
    for step, (frame, ids, types, x) in enumerate(prepared, start=1):
        if lmp.get_natoms():
            lmp.command("delete_atoms group all")
        lmp.reset_box(frame.boxlo.tolist(), frame.boxhi.tolist(), frame.xy, frame.yz, frame.xz)
        create_atoms(lmp, ids, types, x)
        if defined:
            lmp.command("uncompute snap")
            lmp.command("uncompute snap_press")
        if snap:
            lmp.command(f"compute snap all snap {args}")
            defined = True
        lmp.command(f"reset_timestep {step}")  # occasional neighbour lists are rebuilt only on a newer step
        lmp.command("run 0 post no")
        if snap:
            out.append(lmp.numpy.extract_compute("snap", lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_ARRAY).copy())
        else:
            out.append(lmp.numpy.extract_compute("sna", lammps.LMP_STYLE_ATOM, lammps.LMP_TYPE_ARRAY).copy())
    elapsed = time.perf_counter() - t0
    if defined:
        lmp.command("uncompute snap")
        lmp.command("uncompute snap_press")
    return elapsed, out


def ours(frames, basis, species, *, snap: bool):
    t0 = time.perf_counter()
    out = list(snap_rows(frames, basis, species=species, forces=snap, virials=snap))
    return time.perf_counter() - t0, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-frames", type=int, default=200)
    parser.add_argument("--twojmax", type=int, nargs="+", default=[6, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    lammps = load_lammps()
    species = ["Zr"]
    frames = zr_example(args.n_frames, seed=args.seed)
    prepared = []
    for atoms in frames:
        frame = lammps_frame(atoms)
        prepared.append((frame, np.arange(1, len(atoms) + 1, dtype=np.dtype(ctypes.c_int)),
                         np.ones(len(atoms), dtype=np.intc), np.ascontiguousarray(frame.positions).ravel()))
    n_atoms = len(frames[0])
    print(f"{args.n_frames} zr_example frames ({n_atoms} atoms, triclinic), best of {args.repeats}")
    print(f"  {'2J':>3s} {'mode':>16s} {'K':>5s} {'bare ms/frame':>14s} {'snap_rows ms/frame':>19s} {'ratio':>6s}")
    for twojmax in args.twojmax:
        basis = SnapBasis(twojmax=twojmax)
        lmp = bare_instance(lammps, basis, species)
        for snap, mode in ((True, "energy+F+virial"), (False, "energy")):
            t_bare, t_ours = [], []
            for _ in range(args.repeats):
                t, ref = bare(lammps, lmp, prepared, basis, species, snap=snap)
                t_bare.append(t)
                t, rows = ours(frames, basis, species, snap=snap)
                t_ours.append(t)
            # same numbers: bare per-type sums vs snap_rows' energy rows (constant column first)
            bsum = ref[-1][0, :-1] if snap else ref[-1].sum(axis=0)
            assert np.allclose(rows[-1].energy[1:], bsum, rtol=1e-12), "bare and snap_rows disagree"
            b, o = min(t_bare) / args.n_frames * 1e3, min(t_ours) / args.n_frames * 1e3
            print(f"  {twojmax:3d} {mode:>16s} {basis.n_features(species):5d} {b:14.3f} {o:19.3f} {o / b:6.2f}")
        lmp.close()


if __name__ == "__main__":
    main()
