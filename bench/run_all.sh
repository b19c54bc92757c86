#!/usr/bin/env bash
# Run every spine benchmark (start, list, cli, rss) and print the markdown tables.
# Needs root for libvirt's qemu:///system; without libvirt installed the virtkit
# and raw QEMU columns still run.  Extra arguments go to bench_spine.py before the
# subcommand, e.g.  bench/run_all.sh --no-libvirt
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/bench_spine.py "$@" all
python bench/bench_spine.py report
