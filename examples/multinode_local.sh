#!/usr/bin/env bash
# Two "nodes" on one machine over loopback: two torchrun launchers (--nnodes=2), one per
# node, meeting at a c10d rendezvous on 127.0.0.1. On a real cluster run the same torchrun
# line on every node with --rdzv_endpoint=<head node>:<port> (see docs/training.md).
#
# Usage: bash examples/multinode_local.sh [PROCS_PER_NODE] [extra rankmixer-train args...]
# Env:   PYTHON (default: .venv/bin/python, else python3), PORT (default 29547).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
nproc="${1:-1}"
shift || true
port="${PORT:-29547}"
run_id="local-$$"
out="${OUT_DIR:-runs}"
common=(-m torch.distributed.run --nnodes=2 --nproc_per_node="$nproc"
        --rdzv_backend=c10d --rdzv_endpoint="127.0.0.1:$port" --rdzv_id="$run_id"
        -m torchrec_rankmixer.train --set run.out_dir="$out" --set run.name="multinode-$$")
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$py" "${common[@]}" --set train.progress_bar=false "$@" > "$out.node1.log" 2>&1 &
node1=$!
status=0
"$py" "${common[@]}" "$@" || status=$?
wait "$node1" || { echo "node 1 failed; see $out.node1.log" >&2; exit 1; }
# The rendezvous decides which launcher hosts rank 0; if it was the background one, show
# its final table here.
if grep -q "^run_dir" "$out.node1.log"; then sed -n '/^metric /,$p' "$out.node1.log"; fi
exit "$status"
