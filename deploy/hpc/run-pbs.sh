#!/usr/bin/env bash
# Run the whole abz_dask pipeline as one PBS job whose Dask workers are further PBS jobs.
#
#   qsub -v CONFIG=$PWD/deploy/configs/twin-demo.yaml,ABZ_HOME=$PWD deploy/hpc/run-pbs.sh
#
# Workers are submitted by `abz-dask run --cluster pbs` with the `pbs` section of jobqueue.yaml.
#PBS -N abz-dask-run
#PBS -l select=1:ncpus=1:mem=8gb
#PBS -l walltime=24:00:00
#PBS -j oe
set -euo pipefail
: "${CONFIG:?qsub -v CONFIG=/abs/path/run.yaml,ABZ_HOME=/abs/path/abz_dask}"
ABZ_HOME=${ABZ_HOME:-$PBS_O_WORKDIR}
cd "$PBS_O_WORKDIR"
export DASK_CONFIG=${DASK_CONFIG:-$ABZ_HOME/deploy/hpc}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
exec "$ABZ_HOME/.venv/bin/abz-dask" run "$CONFIG" --cluster pbs
