#!/usr/bin/env bash
# The one prepared script to run when a GPU (H100 / H200) is lent: bf16 train-step throughput and
# MFU of the base transformer at configs/base_256.py's size, 24-step guided sampling latency at
# base_256 and aMUSEd-256 sizes (batch 1 and 8), VQGAN-decoder time; a table, one JSON line and
# $OUT/device_check.json. What and how: benchmarks/device_check.py's docstring.
#
# First run on a lent H200 on 2026-12-04: benchmarks/RESULTS.md (device_check).
#
#   bash benchmarks/device_check.sh              # the GPU check; under 8 minutes (hard limit below)
#   bash benchmarks/device_check.sh --smoke      # tiny sizes, any machine (tests/test_device_check.py)
#   PYTHON=.venv/bin/python bash benchmarks/device_check.sh --smoke
#   extra flags go to device_check.py (--batch=64, --parts=train, --budget_s=..., --help)
#
# On the lent machine (python3 there has jax with CUDA, flax, optax, orbax, etils; not
# ml_collections, grain, tensorflow): prepare once here, in the repo root,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
# then run with carry [".whl"] and this command (timeout_s 540 leaves room for the start):
#   bash benchmarks/device_check.sh
# The wheels in .whl/ are installed into /tmp/device_check_site (nothing else is touched);
# grain, which this check never calls, is stubbed by device_check.py where it is missing.
# XLA_FLAGS and the allocator settings are left as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LIMIT="${DEVICE_CHECK_TIMEOUT:-470}"  # seconds: the whole check stays under 8 minutes

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/device_check_site .whl/*.whl \
    && export PYTHONPATH="/tmp/device_check_site${PYTHONPATH:+:$PYTHONPATH}" \
    || echo "device_check.sh: installing .whl/*.whl failed; going on without them" >&2
fi
if command -v nvidia-smi > /dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export PYTHONUNBUFFERED=1
# The Python side keeps its own budget (--budget_s, 420 s by default) and writes its JSON
# after every part; this limit is the backstop.
timeout --signal=TERM --kill-after=15 "$LIMIT" "$PY" benchmarks/device_check.py "$@"
rc=$?
if [ "$rc" -eq 124 ]; then
  echo "device_check.sh: stopped after ${LIMIT} s; \$OUT/device_check.json holds the parts done" >&2
fi
exit "$rc"
