#!/usr/bin/env bash
# Strata against dask.array, a numpy.memmap loop and numpy in memory, on the
# same data and memory limit (not run by CI: it takes minutes).
#   scripts/peers.sh [--n 8192] [--memory 64MiB] [--json rows.json]
# Needs python3 (3.11 or later) and the package index; run as root to cap
# each process with a memory cgroup and to drop the page cache between runs.
set -euo pipefail

cd "$(dirname "$0")/.."

venv="${STRATA_PEERS_VENV:-target/peers-venv}"
packages=(numpy==2.3.5 zarr==3.1.6 "dask[array]==2025.11.0")

if [[ ! -x "${venv}/bin/python" ]]; then
    echo "creating ${venv}"
    python3 -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"

cargo build --quiet --release -p strata-cli
"${venv}/bin/python" scripts/peers.py --strata target/release/strata "$@"
