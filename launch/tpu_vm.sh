#!/usr/bin/env bash
# Runs a muse_jax job on every worker of a Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_vm.sh NAME ZONE "python -m muse_jax.train --config=configs/vqgan_256.py --workdir=gs://B/run"
#
# The first call installs the repo (checked out at ~/muse_jax on each worker) with the `tpu`
# extra; every process then runs the same command, and `--distributed` (added below) makes
# muse_jax.train call jax.distributed.initialize(), which finds the pod's coordinator on its own.
# The workdir must be shared by all workers (a gs:// bucket); a rerun resumes from it.
set -euo pipefail
if [[ $# -ne 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE 'COMMAND'" >&2
  exit 2
fi
name=$1 zone=$2 command=$3
setup='cd ~/muse_jax && (test -x .venv/bin/python || python3 -m venv .venv) &&
  .venv/bin/pip install -q -e ".[tpu]" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html'
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all \
  --command "$setup && cd ~/muse_jax && .venv/bin/$command --distributed"
