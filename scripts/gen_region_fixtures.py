#!/usr/bin/env python3
"""Writes the tiny safetensors fixtures under testdata/region/ with the
Python `safetensors` package (pip install safetensors numpy); the Rust tests
(crates/strata-region/tests/region.rs) open them as regions and check every
value. Deterministic: rerunning writes the same bytes."""

import pathlib

import numpy as np
from safetensors.numpy import save_file

out = pathlib.Path(__file__).resolve().parent.parent / "testdata" / "region"
out.mkdir(parents=True, exist_ok=True)

save_file(
    {
        "weights": np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5 - 1.0,
        "bias": np.array([1.5, -2.25], dtype=np.float64),
        "ids": np.array([[1, -2, 3]], dtype=np.int64),
        "half": np.array([0.5, -1.0, 65504.0], dtype=np.float16),
        "empty": np.zeros((0, 4), dtype=np.int32),
        "flags": np.array([True, False, True]),
        "bytes": np.frombuffer(b"strata", dtype=np.uint8),
    },
    str(out / "python_mixed.safetensors"),
    metadata={"format": "pt", "source": "gen_region_fixtures.py"},
)
save_file({"scalar": np.array(3.25, dtype=np.float32)}, str(out / "python_scalar.safetensors"))
print("wrote", sorted(p.name for p in out.iterdir()))
