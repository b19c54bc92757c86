#!/usr/bin/env bash
# Run every spine benchmark (start, list, cli, rss), then print the markdown tables.
#
# By default it benchmarks a snapshot of a commit (BENCH_REF, default HEAD) exported
# to a temporary folder and byte-compiled, as an installed package would be; this
# keeps the figures tied to one commit while src/ is being edited, and keeps the
# CLI figures free of source compilation (PYTHONDONTWRITEBYTECODE=1 is set on the
# development machines, so the editable checkout never gets .pyc files).
#   BENCH_REF=worktree   benchmark the checkout as it is instead
#   BENCH_COMPILE=0      do not byte-compile the snapshot
#   BENCH_WHAT="start --runs 5"   run one benchmark (start, list, cli or rss, with
#                        its options) instead of all
# Needs root for libvirt's qemu:///system; without libvirt installed the virtkit
# and raw QEMU columns still run.  Arguments go to bench_spine.py before the
# subcommand, e.g.:  bench/run_all.sh --no-libvirt   or   bench/run_all.sh --wait-quiet 300
set -euo pipefail
cd "$(dirname "$0")/.."
ref="${BENCH_REF:-HEAD}"
if [[ "$ref" != "worktree" ]]; then
    snap="$(mktemp -d /tmp/vkbench-src-XXXXXX)"
    trap 'rm -rf "$snap"' EXIT
    git archive "$ref" src | tar -x -C "$snap"
    if [[ "${BENCH_COMPILE:-1}" != "0" ]]; then
        python -m compileall -q "$snap/src"
    fi
    export PYTHONPATH="$snap/src${PYTHONPATH:+:$PYTHONPATH}"
    VIRTKIT_BENCH_COMMIT="$(git rev-parse --short "$ref")"
    export VIRTKIT_BENCH_COMMIT
    echo "benchmarking virtkit $VIRTKIT_BENCH_COMMIT from $snap/src"
fi
# shellcheck disable=SC2086 # BENCH_WHAT is a subcommand and its options
python bench/bench_spine.py "$@" ${BENCH_WHAT:-all}
python bench/bench_spine.py report
