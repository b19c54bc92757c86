#!/bin/sh
# Run the cluster chaos test (tests/real/test_cluster_chaos.py) for many rounds, with a
# seed, under the shared real-test lock: three namespaced hosts, four HA VMs (three on
# a shared-dir pool, one on a netfs pool), and per round every fault once (a host dies,
# a daemon hangs, a host is cut off and comes back, the etcd leader dies) in a seeded
# order, while a monitor checks no VM ever runs twice.
#
#   scripts/cluster-chaos.sh [SEED] [ROUNDS]
#
# Defaults: a seed from the clock (printed, so a failure can be replayed with it) and
# 10 rounds.  Printed at the end: per fault, the seconds from the fault to every HA VM
# running again, from the heal to no stale copy, and (partition, hung daemon) the
# margin between the host's own fence and the first claim elsewhere; then a summary
# per fault (min / median / max).
set -eu
cd "$(dirname "$0")/.."
seed=${1:-$(date +%s)}
rounds=${2:-10}
python=${PYTHON:-.venv/bin/python}
echo "cluster chaos: seed $seed, $rounds rounds"
exec flock /tmp/virtkit-real-tests.lock env PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" \
    VIRTKIT_CLUSTER_CHAOS_SEED="$seed" VIRTKIT_CLUSTER_CHAOS_ROUNDS="$rounds" \
    "$python" -m pytest tests/real/test_cluster_chaos.py -q -s -p no:cacheprovider
