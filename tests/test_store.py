"""The resumable row store: resume, refusal, Dask, memory cap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mlipdoe.criteria import DOptimal
from mlipdoe.descriptors import SOAP
from mlipdoe.exceptions import ConfigurationError, InputError, StoreMismatchError
from mlipdoe.generate import zr_example
from mlipdoe.hypers import Noise
from mlipdoe.model import build_model
from mlipdoe.model.kernels import Kernel
from mlipdoe.optimizers import greedy
from mlipdoe.progress import Progress
from mlipdoe.store import (
    build_model_stored,
    open_store,
    parse_memory,
    plan_chunk_size,
    sample_frames_for_sparse,
)

SMALL = SOAP(n_max=4, l_max=3)
OPTS = dict(soap=SMALL, n_sparse=15, chunk_size=7)


@pytest.fixture(scope="module")
def frames():
    return zr_example(40, seed=3)


@pytest.fixture(scope="module")
def reference(frames, tmp_path_factory):
    """An uninterrupted store build (exact sparse points) of ``frames``."""
    path = tmp_path_factory.mktemp("ref") / "store"
    return build_model_stored(frames, store=path, sparse_sample=None, **OPTS)


class Interrupt(Exception):
    pass


class FailAfter(Progress):
    """Raises inside the row stage after ``k`` chunks have been written."""

    def __init__(self, k):
        self.k = k

    @contextmanager
    def stage(self, name, total):
        count = [0]

        def advance(units=1, atoms=0):
            if name == "rows":
                count[0] += 1
                if count[0] == self.k:
                    raise Interrupt(f"interrupted after {self.k} chunks")

        yield advance


def test_stored_model_equals_in_memory_build(frames, reference):
    ref = build_model(frames, soap=SMALL, n_sparse=15)
    assert reference.sparse.location_list() == ref.sparse.location_list()
    # chunked vs whole-pool triangular solves differ in rounding only
    np.testing.assert_allclose(reference.psi, ref.psi, rtol=0, atol=1e-10 * np.abs(ref.psi).max())
    # d value of a few frames against a from-scratch slogdet of the whitened F̃
    S = [0, 5, 17, 33]
    W = reference.psi[S] / np.sqrt(Noise().energy_variance(reference.n_atoms[S]))[:, None]
    expected = np.linalg.slogdet(np.eye(reference.M) + W.T @ W)[1]
    assert reference.d_value(S) == pytest.approx(expected, rel=1e-10)


def test_interrupted_then_resumed_equals_uninterrupted(frames, reference, tmp_path):
    path = tmp_path / "store"
    with pytest.raises(Interrupt):
        build_model_stored(frames, store=path, sparse_sample=None, progress=FailAfter(3), **OPTS)
    store = open_store(path)
    assert store.completed_chunks() == [0, 1, 2]
    assert len(store.missing_chunks()) == store.n_chunks - 3
    resumed = build_model_stored(frames, store=path, sparse_sample=None, **OPTS)
    assert resumed.store_info["chunks_computed"] == store.n_chunks - 3
    assert np.array_equal(resumed.psi, reference.psi)  # bit-identical
    assert np.array_equal(resumed.L, reference.L)
    assert resumed.sparse.location_list() == reference.sparse.location_list()


def test_killed_process_resumes_bit_identical(frames, reference, tmp_path):
    """kill -9 during the row stage, then resume in this process."""
    path = tmp_path / "store"
    script = textwrap.dedent(f"""
        import time
        from mlipdoe.generate import zr_example
        from mlipdoe.descriptors import SOAP
        from mlipdoe.progress import Progress
        from mlipdoe.store import build_model_stored
        from contextlib import contextmanager
        class Slow(Progress):
            @contextmanager
            def stage(self, name, total):
                yield lambda units=1, atoms=0: time.sleep(0.5 if name == "rows" else 0)
        build_model_stored(zr_example(40, seed=3), store={str(path)!r}, soap=SOAP(n_max=4, l_max=3),
                           n_sparse=15, chunk_size=7, sparse_sample=None, progress=Slow())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and not (path / "chunks" / "c0000001.h5").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = open_store(path)
    assert 0 < len(store.completed_chunks()) < store.n_chunks
    resumed = build_model_stored(frames, store=path, sparse_sample=None, **OPTS)
    assert np.array_equal(resumed.psi, reference.psi)


def test_warm_store_skips_computation_and_noise_is_applied_at_load(frames, reference):
    warm = build_model_stored(frames, store=reference.store_info["path"], sparse_sample=None,
                              noise=Noise(energy=0.005), **OPTS)
    assert warm.store_info["chunks_computed"] == 0
    assert "row_stage" not in warm.timings and "sparse_points" not in warm.timings
    assert np.array_equal(warm.psi, reference.psi)
    np.testing.assert_allclose(warm.energy_variance, 0.005**2 * warm.n_atoms)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(soap=SOAP(n_max=5, l_max=3)), "soap.n_max"),
        (dict(kernel=Kernel(zeta=2)), "kernel.zeta"),
        (dict(seed=1), "seed"),
        (dict(n_sparse=14), "n_sparse"),
        (dict(sparse_sample=100), "sparse_sample"),
        (dict(dtype="float32"), "dtype"),
    ],
)
def test_stale_store_is_refused(frames, reference, change, field):
    args = dict(OPTS, sparse_sample=None)
    args.update(change)
    with pytest.raises(StoreMismatchError, match=rf"built from other inputs \({field}: stored"):
        build_model_stored(frames, store=reference.store_info["path"], **args)


def test_integral_float_inputs_reuse_the_store_and_old_formats_are_refused(frames, reference):
    """ζ = 4.0 (what the CLI passes) and ζ = 4 (the Python default) are one store; a
    manifest of another store format is refused with both formats named."""
    path = reference.store_info["path"]
    warm = build_model_stored(frames, store=path, sparse_sample=None, kernel=Kernel(zeta=4.0, delta=1), **OPTS)
    assert warm.store_info["chunks_computed"] == 0
    assert np.array_equal(warm.psi, reference.psi)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    old = Path(path).parent / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(dict(manifest, format=1)))
    with pytest.raises(StoreMismatchError, match="has format 1, this mlipdoe writes format 3"):
        build_model_stored(frames, store=old, sparse_sample=None, **OPTS)


def test_store_of_another_pool_is_refused(frames, reference):
    other = [a.copy() for a in frames]
    other[7].positions[0, 0] += 1e-6
    with pytest.raises(StoreMismatchError, match="pool.sha256: stored"):
        build_model_stored(other, store=reference.store_info["path"], sparse_sample=None, **OPTS)


def test_creation_killed_before_the_manifest_is_restartable(frames, reference, tmp_path):
    """kill -9 between creating the directory and renaming the manifest into place leaves
    an empty chunks/ and a temporary manifest: the next run starts the store afresh."""
    path = tmp_path / "store"
    (path / "chunks").mkdir(parents=True)
    (path / ".manifest.json.123.456.tmp").write_text('{"half": ')
    model = build_model_stored(frames, store=path, sparse_sample=None, **OPTS)
    assert np.array_equal(model.psi, reference.psi)
    assert not list(path.glob(".*.tmp"))


def test_non_store_directory_is_refused(frames, tmp_path):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(InputError, match="is not an mlipdoe store"):
        build_model_stored(frames, store=tmp_path, **OPTS)


def test_two_worker_dask_cluster_matches_serial(frames, reference, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        assert len(client.nthreads()) == 2
        model = build_model_stored(frames, store=tmp_path / "dask", sparse_sample=None, scheduler=client, **OPTS)
        # the same cluster by address, as `--scheduler tcp://host:port` does
        assert cluster.scheduler_address.startswith(("tcp://", "inproc://"))
        by_address = build_model_stored(frames, store=tmp_path / "addr", sparse_sample=None,
                                        scheduler=cluster.scheduler_address, **OPTS)
    assert np.array_equal(model.psi, reference.psi)
    assert np.array_equal(model.phi, reference.phi)
    assert np.array_equal(by_address.psi, reference.psi)


def test_dask_worker_processes_match_serial(frames, reference, tmp_path):
    """Workers in separate processes (frames, sparse points and rows cross pickling)."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        model = build_model_stored(frames, store=tmp_path / "procs", sparse_sample=None,
                                   scheduler=cluster.scheduler_address, **OPTS)
    assert np.array_equal(model.psi, reference.psi)


def _unaligned(a, offset=4):
    """A copy of ``a`` at an address ``offset`` bytes past 64-byte alignment (as pickle-5
    buffers can arrive on a Dask worker)."""
    buf = np.empty(a.nbytes + 128, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def test_chunk_rows_are_bit_identical_for_unaligned_inputs(frames, reference):
    import copy

    from mlipdoe.store import chunk_rows

    m = reference
    chunk = frames[35:40]
    expected = chunk_rows(chunk, m.soap, m.sparse, m.kernel, m.L)["psi"]
    sparse = copy.copy(m.sparse)
    sparse.vectors = {z: _unaligned(v) for z, v in m.sparse.vectors.items()}
    got = chunk_rows(chunk, m.soap, sparse, m.kernel, _unaligned(m.L))["psi"]
    assert np.array_equal(got, expected)


def test_cli_store_build_on_an_external_dask_cluster(tmp_path):
    """`mlipdoe store build --scheduler tcp://…` against a scheduler and two workers
    started as separate programs (as on a real cluster) gives the serial rows."""
    pytest.importorskip("dask.distributed")
    import ase.io
    from conftest import run_cli

    pool = tmp_path / "pool.xyz"
    ase.io.write(pool, zr_example(30, seed=4), format="extxyz")
    opts = ["--n-sparse", "12", "--n-max", "4", "--l-max", "3", "--chunk-size", "6", "--sparse-sample", "0", "-q"]
    with _external_dask_cluster(tmp_path) as address:
        from dask.distributed import Client

        remote = run_cli("store", "build", pool, "--store", tmp_path / "remote", "--scheduler", address, *opts)
        assert remote.returncode == 0, remote.stderr
        with Client(address, timeout=60) as client:  # the row tasks ran on this cluster
            assert "mlipdoe-rows" in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    serial = run_cli("store", "build", pool, "--store", tmp_path / "serial", *opts)
    assert serial.returncode == 0, serial.stderr
    M = 12
    psi_remote, _ = open_store(tmp_path / "remote").load_rows(M)
    psi_serial, _ = open_store(tmp_path / "serial").load_rows(M)
    assert np.array_equal(psi_remote, psi_serial)


def test_unknown_scheduler_is_refused(frames, tmp_path):
    with pytest.raises(ConfigurationError, match="scheduler must be serial, local, processes or an address"):
        build_model_stored(frames, store=tmp_path / "s", scheduler="yarn", **OPTS)


def test_selection_on_stored_model_matches_in_memory(frames, reference):
    ref = build_model(frames, soap=SMALL, n_sparse=15)
    picks = []
    for model in (reference, ref):
        crit = DOptimal().initialize(model)
        picks.append(greedy(crit, 8, available=np.ones(len(frames), bool)).selected)
    assert picks[0] == picks[1]


def test_float32_store_is_close_to_float64(frames, reference, tmp_path):
    m32 = build_model_stored(frames, store=tmp_path / "f32", sparse_sample=None, dtype="float32", **OPTS)
    assert m32.psi.dtype == np.float32
    np.testing.assert_allclose(m32.psi, reference.psi, rtol=1e-6, atol=1e-6 * np.abs(reference.psi).max())


def test_sparse_sample_is_deterministic_and_covers_species(frames):
    mixed = [a.copy() for a in frames]
    mixed[29].numbers[0] = 22  # one Ti atom in the whole pool
    a = sample_frames_for_sparse(mixed, 50, seed=0)
    b = sample_frames_for_sparse(mixed, 50, seed=0)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert 29 in a.tolist()
    assert sum(len(mixed[i]) for i in a) >= 50


def test_sampled_sparse_points_are_pool_environments(frames, tmp_path):
    from mlipdoe.descriptors import make_descriptor

    model = build_model_stored(frames, store=tmp_path / "s", soap=SMALL, n_sparse=10, chunk_size=7,
                               sparse_sample=120)
    idx = sample_frames_for_sparse(frames, 120, seed=0)
    locs = np.array(model.sparse.location_list())
    assert set(locs[:, 0].tolist()) <= set(idx.tolist())
    # each stored vector is the descriptor of its [frame, atom] in the pool
    desc = make_descriptor(model.soap).compute([frames[f] for f in locs[:, 0]])
    block = desc.blocks[40]
    for k, (f, a) in enumerate(locs):
        row = np.flatnonzero((block.frame == k) & (block.atom == a))[0]
        np.testing.assert_allclose(model.sparse.vectors[40][k], block.values[row], atol=1e-12)


def test_sample_as_large_as_pool_is_exact(frames, reference, tmp_path):
    model = build_model_stored(frames, store=tmp_path / "s", sparse_sample=10**9, **OPTS)
    assert np.array_equal(model.psi, reference.psi)


def test_parse_memory():
    assert parse_memory("4GB") == 4 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory(1e9) == 10**9
    with pytest.raises(InputError, match="cannot read memory limit"):
        parse_memory("lots")


def test_resume_under_a_lower_memory_limit_is_refused(frames, reference, tmp_path, monkeypatch):
    """The chunk layout is fixed at creation; a resumed run whose limit no longer fits a
    stored chunk stops with the size it needs instead of exceeding the cap."""
    import mlipdoe.store as store_module
    from mlipdoe.descriptors import make_descriptor

    path = tmp_path / "store"
    with pytest.raises(Interrupt):
        build_model_stored(frames, store=path, sparse_sample=None, progress=FailAfter(2), **OPTS)
    monkeypatch.setattr(store_module, "current_rss", lambda: 0)  # deterministic planning
    opts = dict(OPTS, chunk_size=None)
    dim = make_descriptor(SMALL.with_species([40])).compute(frames[:1]).dimension
    args = dict(baseline_bytes=0, n_frames=len(frames), mean_atoms=np.mean([len(a) for a in frames]),
                dimension=dim, M=15, itemsize=8)
    one = plan_chunk_size(memory_limit=10**12, **args)
    per_frame = one.per_chunk_bytes / one.chunk_size
    tight = int(one.resident_bytes + 3.5 * per_frame)  # fits 3 frames per chunk, not the stored 7
    assert plan_chunk_size(memory_limit=tight, **args).max_chunk_size == 3
    with pytest.raises(ConfigurationError, match=r"started with chunks of 7 frames; finishing its \d+ missing"):
        build_model_stored(frames, store=path, sparse_sample=None, memory_limit=tight, **opts)
    resumed = build_model_stored(frames, store=path, sparse_sample=None, memory_limit=10**12, **opts)
    assert np.array_equal(resumed.psi, reference.psi)
    # a complete store loads under the tight limit (no chunk left to compute)
    warm = build_model_stored(frames, store=path, sparse_sample=None, memory_limit=tight, **opts)
    assert warm.store_info["chunks_computed"] == 0


def test_plan_refuses_a_limit_below_the_rows():
    with pytest.raises(ConfigurationError, match="memory limit .* too small"):
        plan_chunk_size(memory_limit=10**9, baseline_bytes=2 * 10**8, n_frames=100_000, mean_atoms=32,
                        dimension=448, M=1000, itemsize=8)
    plan = plan_chunk_size(memory_limit=4 * 10**9, baseline_bytes=2 * 10**8, n_frames=100_000, mean_atoms=32,
                           dimension=448, M=1000, itemsize=8)
    assert 1 <= plan.chunk_size <= 100


MEMORY_SCRIPT = """
import json, resource, sys
from mlipdoe.generate import zr_example
from mlipdoe.descriptors import SOAP
from mlipdoe.store import build_model_stored
frames = zr_example({n}, seed=0)
model = build_model_stored(frames, store=sys.argv[1], soap=SOAP(), n_sparse=400, memory_limit={limit},
                           sparse_sample=4000)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) pytest parent
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({{"peak": hwm,
                  "n_atoms": int(model.n_atoms.sum()), "chunk": model.store_info["chunk_size"]}}))
"""


def test_memory_cap_is_honoured_in_a_subprocess(tmp_path):
    """A cap that binds: the pool's per-atom descriptors alone (64,000 × 448 float64,
    229 MB) plus the interpreter exceed it, and it forces chunks below 100 frames."""
    limit = 200 * 10**6
    n = 4000
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(n=n, limit=limit), str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["n_atoms"] * 448 * 8 + 100 * 10**6 > limit  # unchunked would not fit
    assert facts["chunk"] < 100  # the limit, not the default, set the chunk size
    assert facts["peak"] < limit, facts


def test_mean_pooled_descriptors_match_a_direct_mean(frames, reference):
    from mlipdoe.descriptors import make_descriptor

    stored = open_store(reference.store_info["path"]).load_mean_descriptors()
    block = make_descriptor(reference.soap).compute(frames[:9]).blocks[40]
    expected = np.array([block.values[block.frame == f].mean(axis=0) for f in range(9)])
    np.testing.assert_allclose(stored[:9], expected, atol=1e-6)  # stored as float32
    assert stored.shape == (len(frames), block.values.shape[1])


def test_cli_store_build_then_warm_then_refused(tmp_path):
    from typer.testing import CliRunner

    import mlipdoe.cli.store  # noqa: F401  (registers `store`)
    from mlipdoe.cli import app
    from mlipdoe.generate import write_frames

    pool = tmp_path / "pool.xyz"
    write_frames(zr_example(20, seed=1), pool)
    args = ["store", "build", str(pool), "--store", str(tmp_path / "st"), "--n-sparse", "8", "--n-max", "4",
            "--l-max", "3", "--blas-threads", "1", "--memory-limit", "2GB", "-q"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "(1 computed now)" in first.output
    second = runner.invoke(app, args)
    assert "(0 computed now)" in second.output
    third = runner.invoke(app, args[:-3] + ["--zeta", "2", "-q"], standalone_mode=False)
    assert isinstance(third.exception, StoreMismatchError)
    assert "kernel.zeta: stored 4" in str(third.exception)


def test_mixed_sizes_and_two_species_match_in_memory_build(tmp_path):
    """Unequal atoms per frame (segment sums' general path) and a second species."""
    frames = zr_example(30, seed=5)
    for k, atoms in enumerate(frames):
        if k % 3 == 0:
            del atoms[[0, 5]]
        if k % 4 == 1:
            atoms.numbers[[1, 7]] = 22  # Ti
    ref = build_model(frames, soap=SMALL, n_sparse=8)
    model = build_model_stored(frames, store=tmp_path / "s", soap=SMALL, n_sparse=8, chunk_size=7,
                               sparse_sample=None)
    assert model.sparse.species == (22, 40)
    assert model.sparse.location_list() == ref.sparse.location_list()
    np.testing.assert_allclose(model.psi, ref.psi, rtol=0, atol=1e-10 * np.abs(ref.psi).max())
    pooled = open_store(tmp_path / "s").load_mean_descriptors()
    assert pooled.shape[1] == 2 * ref.sparse.vectors[40].shape[1]
    assert np.all(pooled[0, : pooled.shape[1] // 2] == 0)  # frame 0 has no Ti


# ------------------------------------------------------------------ force factors

FORCES = ("energy", "forces")


@pytest.fixture(scope="module")
def force_reference(frames, tmp_path_factory):
    """An uninterrupted force store (default truncation, 0.999 of each frame's information)."""
    path = tmp_path_factory.mktemp("forces") / "store"
    return build_model_stored(frames, store=path, sparse_sample=None, observations=FORCES, **OPTS)


@pytest.fixture(scope="module")
def in_memory_forces(frames):
    return build_model(frames, soap=SMALL, n_sparse=15, observations=FORCES)


def _logdet_block(W):
    W = np.atleast_2d(W)
    return np.linalg.slogdet(np.eye(len(W)) + W @ W.T)[1]


def _criteria(model):
    from mlipdoe.criteria import AOptimal, EOptimal, GOptimal, IOptimal

    return {"d": DOptimal(), "a": AOptimal(), "i": IOptimal(), "g": GOptimal(), "e": EOptimal(),
            "i-forces": IOptimal(force_moment=model.pool_force_moment)}


def test_untruncated_force_store_gives_the_in_memory_design(frames, in_memory_forces, tmp_path):
    """force_information=1: every criterion's picks and gains equal the in-memory force model's."""
    ref = in_memory_forces
    model = build_model_stored(frames, store=tmp_path / "s", sparse_sample=None, observations=FORCES,
                               force_information=1.0, **OPTS)
    assert model.observations == FORCES and len(model.factors) == len(frames)
    assert model.store_info["force_retained_min"] == 1.0
    np.testing.assert_allclose(model.pool_force_moment, ref.pool_force_moment, rtol=1e-10,
                               atol=1e-12 * np.abs(ref.pool_force_moment).max())
    for s in (0, 13, 39):  # same block W_sᵀW_s, other factorisation
        A, B = model.factor(s), ref.factor(s)
        np.testing.assert_allclose(A.T @ A, B.T @ B, rtol=0, atol=1e-10 * np.abs(B.T @ B).max())
    available = np.ones(len(frames), bool)
    for name, crit in _criteria(model).items():
        ref_crit = _criteria(ref)[name]
        got = greedy(crit.initialize(model), 6, available=available)
        want = greedy(ref_crit.initialize(ref), 6, available=available)
        assert got.selected == want.selected, name
        # rows whitened per chunk vs per pool differ in rounding (≈1e-10 of |Ψ|, see the energy
        # test above): measured worst 1.5e-10 relative on a d gain
        scale = np.abs(want.gains).max()
        atol = 1e-9 * scale
        if name == "e":  # a gain is a difference of two λ_min, each as far apart as the two F̃ put it
            lam = [np.linalg.eigvalsh(m.information(want.selected[:k]))[0] for m in (model, ref)
                   for k in range(len(want.selected) + 1)]
            atol += 2 * np.abs(np.subtract(*np.split(np.array(lam), 2))).max()
        np.testing.assert_allclose(got.gains, want.gains, rtol=1e-9, atol=atol, err_msg=name)


def test_truncated_force_factors_keep_the_stated_information(frames, force_reference, in_memory_forces):
    """Each frame keeps ≥ 0.999 of log det(I + W_sᵀW_s) (checked against the untruncated
    in-memory block); D picks are the in-memory ones and each gain is within the bound
    that follows: the truncated value of a design S loses at most 0.001 Σ_{s∈S} g_s."""
    ref, model = in_memory_forces, force_reference
    frac = model.store_info["force_information"]
    assert frac == 0.999
    own = np.array([_logdet_block(ref.factor(s)) for s in range(len(frames))])
    kept = np.array([_logdet_block(model.factor(s)) for s in range(len(frames))])
    assert np.all(kept <= own * (1 + 1e-12))
    assert np.all(kept >= frac * own), (kept / own).min()
    assert model.store_info["force_rank_mean"] < model.store_info["force_full_rank_mean"]  # something was cut
    available = np.ones(len(frames), bool)
    got = greedy(DOptimal().initialize(model), 8, available=available)
    want = greedy(DOptimal().initialize(ref), 8, available=available)
    assert got.selected == want.selected
    bound = 2 * (1 - frac) * np.cumsum(own[want.selected])
    assert np.all(np.abs(np.array(got.gains) - np.array(want.gains)) <= bound)
    assert np.abs(np.array(got.gains) - np.array(want.gains)).max() > 0  # truncation is visible


def test_interrupted_force_store_resumes_bit_identical(frames, force_reference, tmp_path):
    path = tmp_path / "store"
    with pytest.raises(Interrupt):
        build_model_stored(frames, store=path, sparse_sample=None, observations=FORCES, progress=FailAfter(3),
                           **OPTS)
    assert open_store(path).completed_chunks() == [0, 1, 2]
    resumed = build_model_stored(frames, store=path, sparse_sample=None, observations=FORCES, **OPTS)
    assert resumed.store_info["chunks_computed"] == open_store(path).n_chunks - 3
    assert np.array_equal(resumed.psi, force_reference.psi)
    assert np.array_equal(resumed.pool_force_moment, force_reference.pool_force_moment)
    assert all(np.array_equal(a, b) for a, b in zip(resumed.factors, force_reference.factors))
    assert [len(f) for f in resumed.factors] == [len(f) for f in force_reference.factors]


def test_force_store_applies_noise_at_load_and_refuses_a_smaller_force_sigma(frames, force_reference):
    path = force_reference.store_info["path"]
    loose = build_model_stored(frames, store=path, sparse_sample=None, observations=FORCES,
                               noise=Noise(force=0.2), **OPTS)
    assert loose.store_info["chunks_computed"] == 0 and loose.store_info["force_sigma"] == 0.1
    assert loose.store_info["force_retained_min"] >= 0.999  # the share grows with σ_F
    s = 11
    k = len(force_reference.factor(s))
    np.testing.assert_allclose(loose.factor(s)[1:], force_reference.factor(s)[1:] / 2, rtol=1e-15)
    assert len(loose.factor(s)) == k
    with pytest.raises(StoreMismatchError, match=r"for σ_F ≥ 0.1 eV/Å, the request has σ_F = 0.05"):
        build_model_stored(frames, store=path, sparse_sample=None, observations=FORCES, noise=Noise(force=0.05),
                           **OPTS)


def test_store_of_other_observations_is_refused(frames, reference, force_reference):
    with pytest.raises(StoreMismatchError, match=r"holds energy rows, the request observes energy\+forces"):
        build_model_stored(frames, store=reference.store_info["path"], sparse_sample=None, observations=FORCES,
                           **OPTS)
    with pytest.raises(StoreMismatchError, match=r"holds energy\+forces rows, the request observes energy;"):
        build_model_stored(frames, store=force_reference.store_info["path"], sparse_sample=None, **OPTS)
    with pytest.raises(InputError, match="drop virials"):
        build_model_stored(frames, store=reference.store_info["path"], observations=("energy", "forces", "virials"),
                           **OPTS)


def test_plan_counts_the_force_working_set():
    args = dict(memory_limit=None, baseline_bytes=0, n_frames=10_000, mean_atoms=32, dimension=400, M=300,
                itemsize=8)
    energy = plan_chunk_size(**args)
    forces = plan_chunk_size(**args, forces=True, factor_rows=60, gradient_samples=40)
    per_frame = 32 * 3 * 300 * 8 * 3
    assert forces.per_chunk_bytes - energy.per_chunk_bytes == 100 * per_frame
    per_gradient_atom = 40 * 3 * (4 * 400 + 4 * 300) * 8
    assert forces.gradient_atoms == 1000
    assert forces.resident_bytes - energy.resident_bytes == 10_000 * 60 * 300 * 8 + 1000 * per_gradient_atom
    # a limit that binds: fewer atoms per gradient call and smaller chunks, the plan under it
    limit = int(1.8e9)
    limited = plan_chunk_size(**dict(args, memory_limit=limit), forces=True, factor_rows=60, gradient_samples=40)
    assert 32 <= limited.gradient_atoms < 1000 and limited.chunk_size < 100
    assert limited.bytes_for(limited.chunk_size) <= limit < limited.bytes_for(limited.chunk_size + 1)


def test_cli_select_from_a_force_store_end_to_end(tmp_path):
    from conftest import run_cli
    from mlipdoe.generate import write_frames

    pool = tmp_path / "pool.xyz"
    write_frames(zr_example(20, seed=1), pool)
    store = tmp_path / "rows.store"
    small = ["--n-sparse", "8", "--n-max", "4", "--l-max", "3", "-q"]
    energy = run_cli("store", "build", pool, "--store", store, *small)
    assert energy.returncode == 0, energy.stderr
    refused = run_cli("select", pool, "-n", "4", "--store", store, "--observe", "energy,forces", "--criterion", "i",
                      "-o", tmp_path / "x.xyz", "--record", tmp_path / "x.json", *small)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "holds energy rows, the request observes energy+forces" in lines[0]

    fstore = tmp_path / "forces.store"
    args = ["select", pool, "-n", "4", "--store", fstore, "--observe", "energy,forces", "--criterion", "i", *small]
    cold = run_cli(*args, "-o", tmp_path / "a.xyz", "--record", tmp_path / "a.json")
    assert cold.returncode == 0, cold.stderr
    warm = run_cli(*args, "-o", tmp_path / "b.xyz", "--record", tmp_path / "b.json")
    assert warm.returncode == 0, warm.stderr
    records = [json.loads((tmp_path / f"{r}.json").read_text()) for r in ("a", "b")]
    assert records[0]["selected"] == records[1]["selected"] and len(records[0]["selected"]) == 4
    assert records[1]["store"]["chunks_computed"] == 0
    assert records[1]["store"]["force_retained_min"] >= 0.999

    from mlipdoe.criteria import IOptimal
    from mlipdoe.pool_index import POOL_INDEX, read_pool_indexed

    indexed = read_pool_indexed([str(pool)], fstore / POOL_INDEX)
    model = build_model_stored(indexed.frames, store=fstore, soap=SOAP(n_max=4, l_max=3), n_sparse=8,
                               observations=FORCES, config_types=indexed.config_types,
                               pool_sha256=[f.sha256 for f in indexed.files])
    assert model.store_info["chunks_computed"] == 0
    want = greedy(IOptimal().initialize(model), 4, available=np.ones(len(model.psi), bool)).selected
    assert records[0]["selected"] == want


# ------------------------------------------------------------------ force factors on a Dask cluster

FORCE_DATASETS = ("psi", "n_atoms", "force_factors", "force_offsets", "force_singular", "singular_offsets",
                  "force_moment")


def _chunk_arrays(path):
    """Every chunk file's energy rows and force-factor datasets, in chunk order."""
    import h5py

    rs = open_store(path)
    assert rs.complete
    out = []
    for i in range(rs.n_chunks):
        with h5py.File(rs._chunk_path(i), "r") as h:
            out.append({name: h[name][()] for name in FORCE_DATASETS})
    return out


def _assert_same_chunks(got, want):
    assert len(got) == len(want) > 1
    for i, (a, b) in enumerate(zip(got, want)):
        for name in FORCE_DATASETS:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), (i, name)


@contextmanager
def _external_dask_cluster(tmp_path, n_workers=2):
    """A scheduler and ``n_workers`` single-thread workers started as separate programs on
    localhost (as on a real cluster); yields the scheduler address, stops them on exit."""
    from dask.distributed import Client

    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        address, deadline = None, time.time() + 60
        while address is None and time.time() < deadline:
            try:
                address = json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):  # not written yet, or half written
                time.sleep(0.1)
        assert address, "the Dask scheduler did not start"
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                       str(sched_file), "--nworkers", str(n_workers), "--nthreads", "1",
                                       "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=60)
            pids = set(client.run(os.getpid).values())
            assert len(pids) == n_workers and os.getpid() not in pids
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)


def _rows_tasks_run(address) -> int:
    """How many ``mlipdoe-rows`` tasks the scheduler at ``address`` has seen finish."""
    from dask.distributed import Client

    def count(dask_scheduler):
        prefix = dask_scheduler.task_prefixes.get("mlipdoe-rows")
        return 0 if prefix is None else int(prefix.state_counts["memory"])

    with Client(address, timeout=60) as client:
        return client.run_on_scheduler(count)


def test_chunk_force_factors_are_bit_identical_for_unaligned_inputs(frames, force_reference):
    import copy

    from mlipdoe.store import chunk_rows

    m = force_reference
    chunk = frames[35:40]
    forces = (0.999, m.store_info["force_sigma"], 1000)
    expected = chunk_rows(chunk, m.soap, m.sparse, m.kernel, m.L, forces=forces)
    sparse = copy.copy(m.sparse)
    sparse.vectors = {z: _unaligned(v) for z, v in m.sparse.vectors.items()}
    got = chunk_rows(chunk, m.soap, sparse, m.kernel, _unaligned(m.L), forces=forces)
    for name in FORCE_DATASETS:
        assert np.array_equal(got[name], expected[name]), name


def test_force_store_on_an_external_dask_cluster_matches_serial(frames, force_reference, tmp_path):
    """Energy + force rows on a scheduler and two worker processes started as separate programs,
    by `build_model_stored(scheduler="tcp://…")` and by `mlipdoe store build --observe energy,forces
    --scheduler tcp://…`: every chunk's rows and force factors are the serial ones, bit for bit,
    and `mlipdoe select --store` picks the same frames from either store."""
    pytest.importorskip("dask.distributed")
    from conftest import run_cli
    from mlipdoe.generate import write_frames

    pool = tmp_path / "pool.xyz"
    write_frames(zr_example(20, seed=1), pool)
    small = ["--n-sparse", "8", "--n-max", "4", "--l-max", "3", "--sparse-sample", "0", "-q"]
    build = ["store", "build", pool, "--observe", "energy,forces", "--chunk-size", "5", *small]
    with _external_dask_cluster(tmp_path) as address:
        assert address.startswith("tcp://127.0.0.1:")
        model = build_model_stored(frames, store=tmp_path / "api", sparse_sample=None, observations=FORCES,
                                   scheduler=address, **OPTS)
        n_api = open_store(tmp_path / "api").n_chunks
        assert model.store_info["chunks_computed"] == n_api == 6
        assert _rows_tasks_run(address) == n_api  # every chunk was a task on this cluster
        remote = run_cli(*build, "--store", tmp_path / "remote", "--scheduler", address)
        assert remote.returncode == 0, remote.stderr
        assert _rows_tasks_run(address) == n_api + open_store(tmp_path / "remote").n_chunks

    # build_model_stored: chunk files and the loaded model equal the serial store's
    _assert_same_chunks(_chunk_arrays(tmp_path / "api"), _chunk_arrays(force_reference.store_info["path"]))
    assert np.array_equal(model.psi, force_reference.psi)
    assert np.array_equal(model.pool_force_moment, force_reference.pool_force_moment)
    assert len(model.factors) == len(force_reference.factors) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(model.factors, force_reference.factors))

    # the CLI: the remote store equals a serial build of the same pool
    serial = run_cli(*build, "--store", tmp_path / "serial")
    assert serial.returncode == 0, serial.stderr
    _assert_same_chunks(_chunk_arrays(tmp_path / "remote"), _chunk_arrays(tmp_path / "serial"))
    from mlipdoe.pool_index import POOL_INDEX, read_pool_indexed

    loaded = []
    for name in ("remote", "serial"):
        indexed = read_pool_indexed([str(pool)], tmp_path / name / POOL_INDEX)
        loaded.append(build_model_stored(indexed.frames, store=tmp_path / name, soap=SOAP(n_max=4, l_max=3),
                                         n_sparse=8, observations=FORCES, config_types=indexed.config_types,
                                         pool_sha256=[f.sha256 for f in indexed.files]))
    assert all(m.store_info["chunks_computed"] == 0 for m in loaded)
    assert np.array_equal(loaded[0].psi, loaded[1].psi)
    assert np.array_equal(loaded[0].pool_force_moment, loaded[1].pool_force_moment)
    assert all(np.array_equal(a, b) for a, b in zip(loaded[0].factors, loaded[1].factors))

    records = []
    for name in ("remote", "serial"):
        picked = run_cli("select", pool, "--store", tmp_path / name, "--observe", "energy,forces", "--criterion",
                         "d", "-n", "5", "-o", tmp_path / f"{name}.xyz", "--record", tmp_path / f"{name}.json",
                         *small)
        assert picked.returncode == 0, picked.stderr
        records.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert all(r["store"]["chunks_computed"] == 0 for r in records)  # the stores were reused, not rebuilt
    assert len(records[0]["selected"]) == 5 and records[0]["selected"] == records[1]["selected"]


def test_force_store_on_local_worker_processes_matches_serial(frames, force_reference, tmp_path):
    """scheduler="processes": one single-threaded Dask worker process per core gives the
    serial rows and force factors bit for bit."""
    pytest.importorskip("dask.distributed")
    model = build_model_stored(frames, store=tmp_path / "p", sparse_sample=None, observations=FORCES,
                               scheduler="processes", **OPTS)
    assert model.store_info["chunks_computed"] == open_store(tmp_path / "p").n_chunks
    _assert_same_chunks(_chunk_arrays(tmp_path / "p"), _chunk_arrays(force_reference.store_info["path"]))
    assert all(np.array_equal(a, b) for a, b in zip(model.factors, force_reference.factors))



def test_force_factors_read_from_disk_give_the_in_memory_numbers_and_designs(frames, force_reference, tmp_path):
    """factors_in_memory=False: every factor is read from the chunk files when asked, with the
    bits of the loaded ones, and d and i pick the same frames with the same gains."""
    from mlipdoe.criteria import IOptimal
    from mlipdoe.store import StoredFactors

    path = force_reference.store_info["path"]
    disk = build_model_stored(frames, store=path, sparse_sample=None, observations=FORCES, factors_in_memory=False,
                              **OPTS)
    assert isinstance(disk.factors, StoredFactors) and disk.store_info["chunks_computed"] == 0
    assert not disk.store_info["factors_in_memory"] and force_reference.store_info["factors_in_memory"]
    assert len(disk.factors) == len(force_reference.factors)
    assert all(np.array_equal(disk.factors[s], force_reference.factors[s]) for s in range(len(frames)))
    assert np.array_equal(disk.factor_ranks, force_reference.factor_ranks)
    available = np.ones(len(frames), dtype=bool)
    for make in (DOptimal, IOptimal):
        runs = [greedy(make().initialize(m), 6, available=available) for m in (force_reference, disk)]
        assert runs[0].selected == runs[1].selected
        np.testing.assert_array_equal(runs[0].gains, runs[1].gains)
    disk.factors.close()


def test_force_factors_over_the_memory_limit_go_to_disk_with_a_note(frames, force_reference, monkeypatch):
    """Default: factors that do not fit --memory-limit are read from disk, and a note says so;
    factors_in_memory=True under the same limit is refused in one line."""
    from mlipdoe.store import RowStore, StoredFactors, current_rss

    path = force_reference.store_info["path"]
    # the store's factors pretend to need 100 GB: over any limit this test can set
    monkeypatch.setattr(RowStore, "force_rank_sum", lambda self: (10**11 // (8 * force_reference.M), len(frames)))
    opts = dict(store=path, sparse_sample=None, observations=FORCES, memory_limit=current_rss() + 2 * 10**9, **OPTS)
    with pytest.raises(ConfigurationError, match="memory limit"):
        build_model_stored(frames, factors_in_memory=True, **opts)
    model = build_model_stored(frames, **opts)
    assert isinstance(model.factors, StoredFactors) and model.store_info["chunks_computed"] == 0
    assert any("do not fit under the memory limit" in n and "read from the store's chunk files" in n
               for n in model.notes)
    assert all(np.array_equal(model.factors[s], force_reference.factors[s]) for s in (0, len(frames) - 1))
