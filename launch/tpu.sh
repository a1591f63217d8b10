#!/usr/bin/env bash
# Cloud TPU VMs and pod slices for muse_jax: create, set up, run, watch, stop, delete.
#
#   launch/tpu.sh create NAME --zone=us-central2-b --type=v4-64        # queued resource, waits
#   launch/tpu.sh setup  NAME --zone=us-central2-b                     # this checkout -> every worker
#   launch/tpu.sh run    NAME --zone=us-central2-b -- \
#       python -m muse_jax.train --config=configs/base_256.py --workdir=gs://BUCKET/base_256
#   launch/tpu.sh logs   NAME --zone=us-central2-b [--worker=0]        # follow train.log
#   launch/tpu.sh exec   NAME --zone=us-central2-b -- COMMAND ...      # on every worker
#   launch/tpu.sh stop   NAME --zone=us-central2-b                     # SIGTERM the run
#   launch/tpu.sh delete NAME --zone=us-central2-b
#
# Options (any subcommand): --zone=Z (or $TPU_ZONE), --project=P (or $TPU_PROJECT; default:
# gcloud's). create: --type=v4-64|v5e-256|v5litepod-16|v5p-128|v6e-64|..., --version=RUNTIME
# (default by TPU generation), --spot, --direct (tpu-vm create instead of a queued resource),
# --no-wait. run: --log=FILE (on each worker, default train.log in the checkout).
#
# Every worker of a slice runs the same command; muse_jax.train and muse_jax.evaluate get
# --distributed, so jax.distributed.initialize() finds the slice's coordinator on its own. The workdir must be
# one all workers share: a gs:// bucket. Rerunning the same command resumes from it.
set -euo pipefail

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "error: $*" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
subcommand=$1 name=$2
shift 2
[[ $name != -* ]] || die "the TPU name comes before the options (launch/tpu.sh $subcommand NAME ...)"

zone=${TPU_ZONE:-} project=${TPU_PROJECT:-} type="" version="" spot=0 direct=0 wait=1
worker=0 log=train.log
command=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --type=*) type=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --worker=*) worker=${1#*=} ;;
    --log=*) log=${1#*=} ;;
    --spot) spot=1 ;;
    --direct) direct=1 ;;
    --no-wait) wait=0 ;;
    --) shift; command=("$@"); break ;;
    *) die "unknown option $1 (see launch/tpu.sh with no arguments)" ;;
  esac
  shift
done
[[ -n $zone ]] || die "--zone is required (or set TPU_ZONE)"

where=(--zone="$zone")
[[ -z $project ]] || where+=(--project="$project")
# shellcheck disable=SC2088  # expanded by each worker's shell, not here
checkout='~/muse_jax'

# gcloud compute tpus tpu-vm ssh on WORKERS, running CMD (one string) in bash there.
on_workers() {
  local workers=$1 cmd=$2
  gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker="$workers" --command="$cmd"
}

# The accelerator type gcloud knows (v5e-N is sold as v5litepod-N) and its default runtime.
accelerator() {
  case $1 in
    v5e-*) echo "v5litepod-${1#v5e-}" ;;
    *) echo "$1" ;;
  esac
}

runtime_for() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime for --type=$1: pass --version=RUNTIME" ;;
  esac
}

create() {
  [[ -n $type ]] || die "create needs --type, e.g. --type=v4-64 or --type=v5e-256"
  local accel runtime
  accel=$(accelerator "$type")
  runtime=${version:-$(runtime_for "$accel")}
  local extra=()
  [[ $spot -eq 0 ]] || extra+=(--spot)
  if [[ $direct -eq 1 ]]; then
    gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$accel" \
      --version="$runtime" "${extra[@]}"
    return
  fi
  # Queued resources: the request waits for capacity instead of failing when there is none.
  gcloud compute tpus queued-resources create "$name" "${where[@]}" --node-id="$name" \
    --accelerator-type="$accel" --runtime-version="$runtime" "${extra[@]}"
  [[ $wait -eq 1 ]] || return 0
  local state=""
  while :; do
    state=$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
      --format='value(state.state)')
    echo "queued resource $name: $state" >&2
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) die "queued resource $name is $state" ;;
    esac
    sleep "${TPU_POLL_SECONDS:-30}"
  done
}

setup() {
  # Ships this checkout (not a git remote: local changes go too) and installs it with the
  # `tpu` extra into a venv on every worker. TPU VM images have Python 3.10; muse_jax wants 3.11.
  local root archive
  root=$(cd "$(dirname "$0")/.." && pwd)
  archive=$(mktemp -d)/muse_jax.tar.gz
  tar -czf "$archive" -C "$root" --exclude=.venv --exclude=.git --exclude=workdirs \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache .
  gcloud compute tpus tpu-vm scp "$archive" "$name":muse_jax.tar.gz "${where[@]}" --worker=all
  rm -f "$archive"
  on_workers all "set -e
    command -v python3.11 >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; }
    mkdir -p $checkout && tar -xzf ~/muse_jax.tar.gz -C $checkout && cd $checkout
    test -x .venv/bin/python || python3.11 -m venv .venv
    .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]'
    .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), \"devices\")'"
}

run() {
  [[ ${#command[@]} -gt 0 ]] || die "run needs a command after --, e.g. -- python -m muse_jax.train --config=..."
  local args=("${command[@]}")
  if [[ " ${args[*]} " =~ " muse_jax."(train|evaluate)" " && " ${args[*]} " != *" --distributed "* ]]; then
    args+=(--distributed)
  fi
  local quoted
  quoted=$(printf '%q ' "${args[@]}")
  # setsid + nohup: the run outlives the ssh session; one pid file a worker for `stop`.
  on_workers all "cd $checkout && . .venv/bin/activate &&
    if [ -f train.pid ] && kill -0 \$(cat train.pid) 2>/dev/null; then
      echo \"a run is going on (pid \$(cat train.pid)): launch/tpu.sh stop first\" >&2; exit 1; fi
    setsid nohup $quoted > $(printf '%q' "$log") 2>&1 < /dev/null & echo \$! > train.pid"
  echo "started on every worker of $name; follow with: launch/tpu.sh logs $name --zone=$zone" >&2
}

logs() {
  on_workers "$worker" "tail -n 200 -F $checkout/$(printf '%q' "$log")"
}

exec_all() {
  [[ ${#command[@]} -gt 0 ]] || die "exec needs a command after --"
  on_workers all "$(printf '%q ' "${command[@]}")"
}

stop() {
  # SIGTERM: muse_jax.train saves a checkpoint on the way out; the next run resumes from it.
  on_workers all "cd $checkout && if [ -f train.pid ]; then kill -TERM \$(cat train.pid) 2>/dev/null || true; rm -f train.pid; fi"
}

delete() {
  if gcloud compute tpus queued-resources describe "$name" "${where[@]}" >/dev/null 2>&1; then
    gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

case $subcommand in
  create) create ;;
  setup) setup ;;
  run) run ;;
  logs) logs ;;
  exec) exec_all ;;
  stop) stop ;;
  delete) delete ;;
  *) usage ;;
esac
