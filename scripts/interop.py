#!/usr/bin/env python3
"""Strata's formats checked by the ecosystem's own readers, both ways.

Run by scripts/interop.sh inside a virtual environment with numpy, zarr and
xxhash (and safetensors). Every check prints one line; any mismatch raises and
the script exits non-zero.

1. zarr-python writes a matrix of arrays (dtypes x codecs, ragged edge chunks);
   `strata info --checksum` must give the xxh3-64 of the same elements.
2. Strata writes the same matrix (`strata create`); zarr-python reads each
   array and its xxh3-64 must equal Strata's own.
3. Strata's out-of-core results (matmul, einsum specs, reductions,
   elementwise) on small arrays, under budgets small enough to force tiling,
   against numpy within a tolerance derived from the dtype and the sizes.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import xxhash
import zarr
from safetensors import safe_open
from safetensors.numpy import save_file
from zarr.codecs import Crc32cCodec, ZstdCodec

SHAPE = (37, 53)  # ragged against every chunk shape below
CHUNKS = (8, 12)
SHARDS = (16, 24)
DTYPES = {  # numpy name -> strata --dtype
    "float32": "f32",
    "float64": "f64",
    "int32": "i32",
    "int64": "i64",
    "uint8": "u8",
    "float16": "f16",
}
# name -> (zarr-python create_array keywords, strata create flags)
CODECS = {
    "bytes": ({"compressors": None}, []),
    "zstd": ({"compressors": [ZstdCodec(level=3)]}, ["--zstd", "3"]),
    "crc32c": ({"compressors": [Crc32cCodec()]}, ["--crc32c"]),
    "sharded": (
        {"compressors": [ZstdCodec(level=1), Crc32cCodec()], "shards": SHARDS},
        ["--zstd", "1", "--crc32c", "--shard", ",".join(map(str, SHARDS))],
    ),
}


class Strata:
    def __init__(self, binary):
        self.binary = binary

    def run(self, *args):
        result = subprocess.run(
            [self.binary, *map(str, args)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"strata {' '.join(map(str, args))} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def checksum(self, path):
        info = json.loads(self.run("info", path, "--json", "--checksum"))
        return info["content_xxh3"], info


def digest(array):
    """xxh3-64 of the elements in C order, little-endian (Strata's definition)."""
    data = np.ascontiguousarray(array)
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    return xxhash.xxh3_64_hexdigest(data.tobytes())


def sample(rng, dtype, shape):
    if dtype in ("int32", "int64"):
        return rng.integers(-(10**6), 10**6, size=shape).astype(dtype)
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def zarr_python_writes(strata, work, rng):
    for dtype in DTYPES:
        for codec, (keywords, _) in CODECS.items():
            path = work / f"py-{dtype}-{codec}.zarr"
            data = sample(rng, dtype, SHAPE)
            array = zarr.create_array(
                store=str(path),
                shape=SHAPE,
                chunks=CHUNKS,
                dtype=dtype,
                fill_value=0,
                **keywords,
            )
            array[...] = data
            got, info = strata.checksum(path)
            want = digest(data)
            if got != want or info["shape"] != list(SHAPE):
                raise AssertionError(f"{path.name}: strata read {got} {info}, numpy {want}")
            print(f"ok  zarr-python wrote {dtype:8} {codec:8} -> strata read it ({got})")


def strata_writes(strata, work):
    for seed, (dtype, strata_dtype) in enumerate(DTYPES.items()):
        for codec, (_, flags) in CODECS.items():
            path = work / f"strata-{dtype}-{codec}.zarr"
            strata.run(
                "create", path, "--shape", ",".join(map(str, SHAPE)),
                "--chunks", ",".join(map(str, CHUNKS)), "--dtype", strata_dtype,
                "--fill", "random", "--seed", seed + 1, *flags,
            )
            want, _ = strata.checksum(path)
            array = zarr.open_array(str(path), mode="r")
            data = array[...]
            if str(data.dtype) != dtype or data.shape != SHAPE:
                raise AssertionError(f"{path.name}: zarr-python sees {data.dtype} {data.shape}")
            got = digest(data)
            if got != want:
                raise AssertionError(f"{path.name}: zarr-python read {got}, strata wrote {want}")
            print(f"ok  strata wrote {dtype:8} {codec:8} -> zarr-python read it ({got})")


def write_zarr(path, data, chunks):
    array = zarr.create_array(
        store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0
    )
    array[...] = data
    return path


def unit_roundoff(dtype):
    return float(np.finfo(np.float32 if dtype == np.float32 else np.float64).eps) / 2


def check_close(name, got, want, bound):
    """|got - want| <= bound elementwise (bound already includes the
    output's own rounding)."""
    err = np.abs(got.astype(np.float64) - want)
    worst = float(np.max(err - bound)) if err.size else 0.0
    if worst > 0:
        raise AssertionError(f"{name}: error exceeds its bound by {worst:g}")
    print(f"ok  {name}: max error {float(np.max(err)) if err.size else 0.0:.3g} within bound")


def numpy_checks(strata, work, rng):
    memory = "1MiB"  # small enough to tile every job below
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        u = unit_roundoff(dtype)
        a = sample(rng, name, (67, 45))
        b = sample(rng, name, (45, 38))
        bt = sample(rng, name, (38, 45))
        a2 = sample(rng, name, (67, 45))
        a3 = sample(rng, name, (67, 45))
        batch_a = sample(rng, name, (3, 21, 17))
        batch_b = sample(rng, name, (3, 17, 14))
        pa = write_zarr(work / f"a-{name}.zarr", a, (16, 8))
        pb = write_zarr(work / f"b-{name}.zarr", b, (8, 16))
        pbt = write_zarr(work / f"bt-{name}.zarr", bt, (16, 8))
        pa2 = write_zarr(work / f"a2-{name}.zarr", a2, (32, 32))
        pa3 = write_zarr(work / f"a3-{name}.zarr", a3, (10, 45))
        pba = write_zarr(work / f"ba-{name}.zarr", batch_a, (1, 8, 8))
        pbb = write_zarr(work / f"bb-{name}.zarr", batch_b, (2, 8, 8))
        A, B, BT = (x.astype(np.float64) for x in (a, b, bt))

        def contraction(tag, spec, left, right, want, terms_abs, depth):
            out = work / f"{tag}-{name}.zarr"
            strata.run("einsum", spec, left, right, "-o", out, "--memory", memory)
            got = zarr.open_array(str(out), mode="r")[...]
            gamma = depth * u / (1 - depth * u)
            check_close(f"{name} einsum {spec}", got, want, gamma * terms_abs + u * np.abs(want))

        out = work / f"mm-{name}.zarr"
        strata.run("matmul", pa, pb, "-o", out, "--memory", memory)
        got = zarr.open_array(str(out), mode="r")[...]
        gamma = 45 * u / (1 - 45 * u)
        check_close(f"{name} matmul", got, A @ B, gamma * (np.abs(A) @ np.abs(B)) + u * np.abs(A @ B))
        contraction("ab-t", "ij,kj->ik", pa, pbt, A @ BT.T, np.abs(A) @ np.abs(BT.T), 45)
        contraction("ji", "ij,jk->ki", pa, pb, (A @ B).T, (np.abs(A) @ np.abs(B)).T, 45)
        BA, BB = batch_a.astype(np.float64), batch_b.astype(np.float64)
        contraction(
            "batched", "bij,bjk->bik", pba, pbb, BA @ BB, np.abs(BA) @ np.abs(BB), 17
        )
        A2 = a2.astype(np.float64)
        contraction(
            "rowdot", "ij,ij->i", pa, pa2, np.sum(A * A2, axis=1),
            np.sum(np.abs(A * A2), axis=1), 45,
        )

        for op in ("sum", "mean", "min", "max"):
            for axes, np_axes in (("0", 0), ("1", 1), ("0,1", None)):
                out = work / f"r-{op}-{axes.replace(',', '')}-{name}.zarr"
                strata.run("reduce", op, pa, "--axes", axes, "-o", out, "--memory", memory)
                got = np.asarray(zarr.open_array(str(out), mode="r")[...])
                want = getattr(np, op)(A, axis=np_axes)
                if op in ("min", "max"):
                    bound = np.zeros_like(want)
                else:
                    # Compensated summation: about 2u relative to sum |a|,
                    # plus the result's own rounding.
                    n = A.size if np_axes is None else A.shape[np_axes]
                    scale = np.sum(np.abs(A), axis=np_axes) / (n if op == "mean" else 1)
                    bound = 4 * u * scale + u * np.abs(want)
                check_close(f"{name} reduce {op} axes {axes}", got.reshape(np.shape(want)), want, bound)

        # The references of the elementwise ops are computed in long double
        # (64-bit significand on x86-64), whose own error is bounded by
        # eps_ld per rounding; Strata rounds once in the compute type.
        ld = np.longdouble
        eps_ld = float(np.finfo(ld).eps)
        L, L2, L3 = (x.astype(ld) for x in (a, a2, a3))
        for op, inputs, want, magnitude in (
            ("add", (pa, pa2), L + L2, np.abs(L) + np.abs(L2)),
            ("sub", (pa, pa2), L - L2, np.abs(L) + np.abs(L2)),
            ("mul", (pa, pa2), L * L2, np.abs(L * L2)),
            ("div", (pa, pa2), L / L2, np.abs(L / L2)),
            ("min", (pa, pa2), np.minimum(L, L2), None),
            ("max", (pa, pa2), np.maximum(L, L2), None),
            ("fma", (pa, pa2, pa3), L * L2 + L3, np.abs(L * L2) + np.abs(L3)),
            ("scale", (pa,), L * ld(0.75) - ld(2), np.abs(L) * ld(0.75) + ld(2)),
        ):
            out = work / f"m-{op}-{name}.zarr"
            extra = ["--scale", "0.75", "--offset", "-2"] if op == "scale" else []
            strata.run("map", op, *inputs, *extra, "-o", out, "--memory", memory)
            got = zarr.open_array(str(out), mode="r")[...].astype(ld)
            err = np.abs(got - want)
            if magnitude is None:
                bound = np.zeros_like(want)  # min and max are exact
            else:
                bound = u * np.abs(want) + 2 * eps_ld * magnitude
            worst = float(np.max(err - bound))
            if worst > 0:
                raise AssertionError(f"{name} map {op}: error exceeds its bound by {worst:g}")
            print(f"ok  {name} map {op}: max error {float(np.max(err)):.3g} within bound")


def safetensors_both_ways(strata, work, rng):
    """The safetensors package writes files Strata opens as regions (and
    re-writes with checksums); Strata's regions open in safe_open with the
    same tensors, including layers Strata built from raw files."""
    tensors = {
        "f32": rng.standard_normal((7, 5)).astype(np.float32),
        "f64": rng.standard_normal((3,)).astype(np.float64),
        "f16": rng.standard_normal((2, 2, 3)).astype(np.float16),
        "i64": rng.integers(-(10**9), 10**9, size=(4, 1)).astype(np.int64),
        "i32": rng.integers(-1000, 1000, size=(9,)).astype(np.int32),
        "u8": rng.integers(0, 256, size=(13,)).astype(np.uint8),
        "bool": rng.integers(0, 2, size=(5,)).astype(bool),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    original = work / "python.safetensors"
    save_file(tensors, str(original), metadata={"origin": "interop"})
    info = json.loads(strata.run("region", "inspect", original, "--json"))
    if sorted(layer["name"] for layer in info["layers"]) != sorted(tensors):
        raise AssertionError(f"strata sees {info['layers']}")
    strata.run("region", "verify", original)
    region = work / "python.region"
    strata.run("region", "import", original, "-o", region)
    with safe_open(str(region), framework="numpy") as f:
        names = [n for n in f.keys() if not n.startswith("__strata_pad_")]
        if sorted(names) != sorted(tensors):
            raise AssertionError(f"safe_open sees {sorted(f.keys())}")
        for name, want in tensors.items():
            got = f.get_tensor(name)
            if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
                raise AssertionError(f"{name}: safe_open read {got!r}, wrote {want!r}")
        if f.metadata().get("origin") != "interop" or f.metadata().get("strata.format") != "1":
            raise AssertionError(f"metadata {f.metadata()}")
    print(f"ok  safetensors wrote {len(tensors)} tensors -> strata imported them -> safe_open read them back")
    # A region Strata builds from raw files (a manifest with dtypes).
    raw = work / "raw"
    raw.mkdir()
    tensors["f32"].tofile(raw / "f32.bin")
    tensors["i64"].tofile(raw / "i64.bin")
    manifest = raw / "manifest.json"
    manifest.write_text(json.dumps([
        {"name": "weights", "file": "f32.bin", "dtype": "F32", "shape": [7, 5], "attributes": {"k": "v"}},
        {"name": "ids", "file": "i64.bin", "dtype": "I64", "shape": [4, 1]},
    ]))
    built = work / "built.region"
    strata.run("region", "build", manifest, "-o", built)
    with safe_open(str(built), framework="numpy") as f:
        for name, want in (("weights", tensors["f32"]), ("ids", tensors["i64"])):
            if not np.array_equal(f.get_tensor(name), want):
                raise AssertionError(f"{name}: safe_open read something else")
    print("ok  strata built a region from raw files -> safe_open read the same tensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strata", required=True, help="the strata binary")
    parser.add_argument("--seed", type=int, default=20261123)
    args = parser.parse_args()
    strata = Strata(args.strata)
    rng = np.random.default_rng(args.seed)
    print(f"numpy {np.__version__}, zarr {zarr.__version__}, seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="strata-interop-") as tmp:
        work = pathlib.Path(tmp)
        zarr_python_writes(strata, work, rng)
        strata_writes(strata, work)
        numpy_checks(strata, work, rng)
        safetensors_both_ways(strata, work, rng)
    print("interop: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
