#!/usr/bin/env bash
# Checks Strata's formats with the ecosystem's own readers (zarr-python,
# numpy, safetensors), both ways. Needs python3 (3.11 or
# later) and the package index; everything else it installs itself:
#   scripts/interop.sh
# STRATA_INTEROP_VENV picks where the virtual environment lives
# (default target/interop-venv, reused between runs).
set -euo pipefail

cd "$(dirname "$0")/.."

venv="${STRATA_INTEROP_VENV:-target/interop-venv}"
# Versions known to work; newer ones are fine too.
packages=(numpy==2.3.5 zarr==3.1.6 xxhash==3.6.0 safetensors==0.7.0)

if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    # Debian splits venv and pip out of python3.
    echo "installing python3-venv from apt"
    sudo_cmd=""
    if [[ "$(id -u)" != 0 ]]; then sudo_cmd="sudo"; fi
    ${sudo_cmd} apt-get update -qq
    ${sudo_cmd} apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
if [[ ! -x "${venv}/bin/python" ]]; then
    echo "creating ${venv}"
    python3 -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"

cargo build --quiet -p strata-cli
"${venv}/bin/python" scripts/interop.py --strata target/debug/strata "$@"
