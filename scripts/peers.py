#!/usr/bin/env python3
"""Strata side by side with what users would pick instead, on the same data
and the same memory limit: out-of-core matmul and a column-sum reduction.

Peers: dask.array (threaded scheduler, chunks sized for the budget), a
numpy.memmap tiled loop, and numpy in memory (no limit: it is the reference
for speed, run only where the arrays fit). Every run is a child process,
started after the page cache is dropped, inside a memory cgroup limited to
the budget plus a fixed allowance for the interpreter and libraries (the
same for every peer), and timed by /usr/bin/time: wall time, peak RSS (the
kernel's own figure for the process) and blocks read from storage.

Run through scripts/peers.sh, which builds Strata and makes the virtual
environment. Prints one table and, with --json, writes the rows.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup/memory")
# What every capped process may use beyond the budget: an interpreter with
# numpy and dask imported takes about this much before touching data.
ALLOWANCE_BYTES = 256 << 20
CHUNK_SIDE = 512  # the Zarr inputs' chunks, as Strata writes by default


def parse_size(text):
    match = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)?", text)
    if not match:
        raise SystemExit(f"bad size {text!r} (use e.g. 64MiB)")
    scale = {"B": 1, None: 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[match.group(2)]
    return int(match.group(1)) * scale


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    try:
        pathlib.Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


class Cgroup:
    """A cgroup-v1 memory group limited to `limit_bytes` (None if the
    system does not offer one we may create)."""

    def __init__(self, limit_bytes):
        self.path = None
        if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
            return
        path = CGROUP_ROOT / f"strata-peers-{os.getpid()}"
        try:
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit_bytes))
            self.path = path
        except OSError:
            if path.exists():
                path.rmdir()

    def wrap(self, argv):
        if self.path is None:
            return argv
        # The child joins the group before it executes the command.
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv]

    def close(self):
        if self.path is not None:
            self.path.rmdir()


def timed(argv, cgroup):
    """Runs argv under /usr/bin/time; returns (seconds, peak RSS bytes,
    bytes read from storage, stdout, exit code)."""
    drop_page_cache()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        command = ["/usr/bin/time", "-o", timing.name, "-f", "%e %M %I"]
        command += cgroup.wrap(argv) if cgroup else argv
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.monotonic() - started
        fields = timing.read().strip().splitlines()
    last = fields[-1].split() if fields else []
    if result.returncode != 0 or len(last) != 3:
        return wall, None, None, result.stdout + result.stderr, result.returncode
    _, max_rss_kib, blocks_in = last
    return wall, int(max_rss_kib) * 1024, int(blocks_in) * 512, result.stdout, 0


# ---- children: each peer's job, run in its own process ----

def child_dask_matmul(a, b, out, side, threads):
    import dask
    import dask.array as da

    A = da.from_zarr(a).rechunk((side, side))
    B = da.from_zarr(b).rechunk((side, side))
    with dask.config.set(scheduler="threads", num_workers=threads):
        (A @ B).to_zarr(out, overwrite=True)


def child_dask_sum(a, out, side, threads):
    import dask
    import dask.array as da
    import numpy as np

    A = da.from_zarr(a).rechunk((side, side))
    with dask.config.set(scheduler="threads", num_workers=threads):
        np.save(out, A.sum(axis=0, dtype="float64").compute())


def dask_chunk_side(budget_bytes):
    # A matmul task holds an output block and an A and a B block; two
    # threads run at once, and the scheduler keeps a few results around:
    # aim for about 8 blocks of f32 in the budget, in multiples of the
    # stored chunks so no chunk is read twice per block.
    side = int((budget_bytes / 8 / 4) ** 0.5)
    return max(CHUNK_SIDE, side // CHUNK_SIDE * CHUNK_SIDE)


def memmap_tile_side(budget_bytes, n):
    # Three tiles of f32 (A, B and the C accumulator) in the budget.
    side = int((budget_bytes / 3 / 4) ** 0.5)
    side = max(64, side // 64 * 64)
    return min(side, n)


def child_memmap_matmul(a, b, out, budget_bytes):
    import numpy as np

    A = np.load(a, mmap_mode="r")
    B = np.load(b, mmap_mode="r")
    n = A.shape[0]
    C = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, B.shape[1]))
    t = memmap_tile_side(budget_bytes, n)
    for i in range(0, n, t):
        for j in range(0, B.shape[1], t):
            acc = np.zeros((min(t, n - i), min(t, B.shape[1] - j)), dtype=np.float32)
            for k in range(0, A.shape[1], t):
                acc += np.asarray(A[i:i + t, k:k + t]) @ np.asarray(B[k:k + t, j:j + t])
            C[i:i + t, j:j + t] = acc
    C.flush()
    del C


def child_memmap_sum(a, out, budget_bytes):
    import numpy as np

    A = np.load(a, mmap_mode="r")
    n = A.shape[0]
    rows = max(1, budget_bytes // 2 // (A.shape[1] * 4))
    total = np.zeros(A.shape[1], dtype=np.float64)
    for i in range(0, n, rows):
        total += np.asarray(A[i:i + rows]).sum(axis=0, dtype=np.float64)
    np.save(out, total)


def child_numpy_matmul(a, b, out):
    import numpy as np

    np.save(out, np.load(a) @ np.load(b))


def child_numpy_sum(a, out):
    import numpy as np

    np.save(out, np.load(a).sum(axis=0, dtype=np.float64))


CHILDREN = {
    "dask-matmul": child_dask_matmul,
    "dask-sum": child_dask_sum,
    "memmap-matmul": child_memmap_matmul,
    "memmap-sum": child_memmap_sum,
    "numpy-matmul": child_numpy_matmul,
    "numpy-sum": child_numpy_sum,
}


def run_child(argv):
    name, *args = argv
    converted = [int(x) if x.isdigit() else x for x in args]
    CHILDREN[name](*converted)


# ---- the comparison ----

def generate(work, n, seed):
    import numpy as np
    import zarr

    rng = np.random.default_rng(seed)
    paths = {}
    for name in ("a", "b"):
        data = rng.uniform(-1, 1, size=(n, n)).astype(np.float32)
        np.save(work / f"{name}.npy", data)
        array = zarr.create_array(
            store=str(work / f"{name}.zarr"), shape=data.shape,
            chunks=(CHUNK_SIDE, CHUNK_SIDE), dtype="float32", compressors=None,
        )
        array[...] = data
        paths[name] = data
    return paths


def check_matmul(work, name, got_path, a, b, samples=16):
    """Sampled entries of a product against f64 dot products."""
    import numpy as np
    import zarr

    n = a.shape[0]
    if str(got_path).endswith(".zarr"):
        got = zarr.open_array(str(got_path), mode="r")
    else:
        got = np.load(got_path, mmap_mode="r")
    rng = np.random.default_rng(7)
    u = np.finfo(np.float32).eps / 2
    for _ in range(samples):
        i, j = rng.integers(0, n, size=2)
        exact = float(a[i].astype(np.float64) @ b[:, j].astype(np.float64))
        bound = n * u / (1 - n * u) * float(np.abs(a[i]).astype(np.float64) @ np.abs(b[:, j]))
        value = float(got[i, j])
        if abs(value - exact) > bound + u * abs(exact):
            raise AssertionError(f"{name}: C[{i},{j}] = {value}, expected {exact}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        run_child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strata", required=True)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--memory", default="64MiB")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--work", help="directory for the data (default: a temporary one)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    budget = parse_size(args.memory)
    n = args.n
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="strata-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    import dask
    import numpy as np
    import zarr

    print(f"data: two {n}x{n} f32 arrays ({n * n * 4 / 2**20:.0f} MiB each) in {work}; "
          f"budget {budget >> 20} MiB = inputs / {2 * n * n * 4 / budget:.1f}")
    inputs = generate(work, n, args.seed)
    a, b = inputs["a"], inputs["b"]
    cgroup = Cgroup(budget + ALLOWANCE_BYTES)
    caps = (f"memory cgroup limit {(budget + ALLOWANCE_BYTES) >> 20} MiB (budget + "
            f"{ALLOWANCE_BYTES >> 20} MiB for interpreter and libraries)"
            if cgroup.path else "no memory cgroup available: runs are not capped")
    print(caps)
    me = [sys.executable, os.path.abspath(__file__), "child"]
    jobs = [
        ("matmul", "strata", [args.strata, "matmul", work / "a.zarr", work / "b.zarr",
                              "-o", work / "c-strata.zarr", "--memory", args.memory, "--json"],
         work / "c-strata.zarr", True),
        ("matmul", "dask.array", me + ["dask-matmul", work / "a.zarr", work / "b.zarr",
                                       work / "c-dask.zarr", "SIDE", args.threads],
         work / "c-dask.zarr", True),
        ("matmul", "numpy.memmap tiles", me + ["memmap-matmul", work / "a.npy", work / "b.npy",
                                               work / "c-memmap.npy", budget],
         work / "c-memmap.npy", True),
        ("matmul", "numpy in memory", me + ["numpy-matmul", work / "a.npy", work / "b.npy",
                                            work / "c-numpy.npy"], work / "c-numpy.npy", False),
        ("sum axis 0", "strata", [args.strata, "reduce", "sum", work / "a.zarr", "--axes", "0",
                                  "-o", work / "r-strata.zarr", "--memory", args.memory, "--json"],
         None, True),
        ("sum axis 0", "dask.array", me + ["dask-sum", work / "a.zarr", work / "r-dask.npy",
                                           "SIDE", args.threads], None, True),
        ("sum axis 0", "numpy.memmap tiles", me + ["memmap-sum", work / "a.npy",
                                                   work / "r-memmap.npy", budget], None, True),
        ("sum axis 0", "numpy in memory", me + ["numpy-sum", work / "a.npy", work / "r-numpy.npy"],
         None, False),
    ]
    rows = []
    try:
        for job, peer, argv, output, capped in jobs:
            # Dask's chunks start at the size meant for the budget and halve
            # (down to the stored chunks) while a run is killed for memory.
            sides = [None]
            if "SIDE" in argv:
                side = dask_chunk_side(budget)
                sides = []
                while side >= CHUNK_SIDE:
                    sides.append(side)
                    side //= 2
            for side in sides:
                name = peer if side is None else f"{peer} (chunks {side})"
                command = [str(side) if x == "SIDE" else str(x) for x in argv]
                wall, rss, read, out, code = timed(command, cgroup if capped else None)
                status = "ok"
                if code != 0:
                    killed = code in (137, -9) or "Killed" in out
                    status = f"failed ({code})" + (": killed, over the memory limit" if killed else "")
                elif output is not None:
                    check_matmul(work, peer, output, a, b)
                rows.append({"job": job, "peer": name, "wall_s": wall, "peak_rss_bytes": rss,
                             "read_bytes": read, "capped": capped and cgroup.path is not None,
                             "status": status})
                print(f"  {job:10} {name:28} {status:4} {wall:7.2f} s", flush=True)
                if code == 0:
                    break
    finally:
        cgroup.close()
    flops = 2 * n ** 3
    print()
    print(f"| job | peer | wall s | vs strata | GFLOP/s | peak RSS MiB | read from storage MiB | capped | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["job"] == row["job"] and r["peer"] == "strata")
        ratio = row["wall_s"] / base["wall_s"]
        gflops = f"{flops / row['wall_s'] / 1e9:.1f}" if row["job"] == "matmul" and row["status"] == "ok" else "—"
        rss = f"{row['peak_rss_bytes'] / 2**20:.0f}" if row["peak_rss_bytes"] else "—"
        read = f"{row['read_bytes'] / 2**20:.0f}" if row["read_bytes"] is not None else "—"
        print(f"| {row['job']} | {row['peer']} | {row['wall_s']:.2f} | {ratio:.2f}x | {gflops} | {rss} | {read} | "
              f"{'yes' if row['capped'] else 'no'} | {row['status']} |")
    print()
    print(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"numpy {np.__version__}, dask {dask.__version__}, zarr {zarr.__version__}; "
          f"{time.strftime('%Y-%m-%d')}; n {n}, budget {args.memory}, threads {args.threads}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.work:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
