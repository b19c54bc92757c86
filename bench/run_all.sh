#!/usr/bin/env bash
# Run every spine benchmark (start, list, cli, rss), every storage benchmark
# (clone, transfer, import), every network benchmark (throughput, dhcp) and every
# install benchmark (import, unattended), then print the markdown tables.
#
# By default it benchmarks a snapshot of a commit (BENCH_REF, default HEAD) exported
# to a temporary folder and byte-compiled, as an installed package would be; this
# keeps the figures tied to one commit while src/ is being edited, and keeps the
# CLI figures free of source compilation (PYTHONDONTWRITEBYTECODE=1 is set on the
# development machines, so the editable checkout never gets .pyc files).
#   BENCH_REF=worktree   benchmark the checkout as it is instead
#   BENCH_COMPILE=0      do not byte-compile the snapshot
#   BENCH_WHAT="start --runs 5"   run one benchmark (start, list, cli or rss, with
#                        its options) instead of all; "clone", "transfer" or "import"
#                        (with options) runs one storage benchmark, "throughput" or
#                        "dhcp" one network benchmark, "unattended" one install
#                        benchmark; with BENCH_SUITE set, BENCH_WHAT names a benchmark
#                        of that suite (BENCH_SUITE=install BENCH_WHAT=import is
#                        virtkit install --import vs virt-install, not vol-import)
#   BENCH_SUITE=spine|storage|network|install|stats|snapshots|diskbus|web|api   run only
#                        that suite's benchmarks (api: list/dominfo under 20 clients,
#                        virtkitd vs libvirtd through libvirt-python; web: the web
#                        console in headless Chromium)
#                        (default: all)
# Needs root for libvirt's qemu:///system; without libvirt installed the virtkit
# and raw QEMU columns still run (storage: everything but virt-clone; network:
# virtkit's side only; install: virtkit's side only).  The network benchmarks run
# inside network namespaces of their own (libvirtd too), so nothing reaches the
# host's network.  Arguments go to bench_spine.py, bench_storage.py,
# bench_network.py and bench_install.py before the subcommand:
#   bench/run_all.sh --no-libvirt   or   bench/run_all.sh --wait-quiet 300
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
suite="${BENCH_SUITE:-all}"
what="${BENCH_WHAT:-}"
if [[ -n "$what" && "$suite" == "all" ]]; then
    case "${what%% *}" in
        clone|transfer|import) suite=storage ;;
        throughput|dhcp) suite=network ;;
        unattended) suite=install ;;
        domstats|disk) suite=stats ;;
        run) suite=api ;;
        *) suite=spine ;;
    esac
fi
runs() { [[ "$suite" == "all" || "$suite" == "$1" ]]; }
# shellcheck disable=SC2086 # BENCH_WHAT is a subcommand and its options
if runs spine; then
    python bench/bench_spine.py "$@" ${what:-all}
fi
# shellcheck disable=SC2086
if runs storage; then
    python bench/bench_storage.py "$@" ${what:-all}
fi
# shellcheck disable=SC2086
if runs network; then
    python bench/bench_network.py "$@" ${what:-all}
fi
# shellcheck disable=SC2086
if runs install; then
    python bench/bench_install.py "$@" ${what:-all}
fi
# shellcheck disable=SC2086
if runs stats; then
    python bench/bench_stats.py "$@" ${what:-all}
fi
# shellcheck disable=SC2086
if runs snapshots; then
    python bench/bench_snapshots.py "$@" ${what:-all}
fi
# shellcheck disable=SC2086 # the web console in headless Chromium (needs chromium)
if runs web; then
    python bench/bench_web.py all
fi
# shellcheck disable=SC2086
if runs diskbus; then
    python bench/bench_diskbus.py "$@" ${what:-all}
fi
# shellcheck disable=SC2086
if runs api; then
    python bench/bench_api.py "$@" ${what:-run}
fi
if runs spine; then
    python bench/bench_spine.py report
fi
if runs storage; then
    python bench/bench_storage.py report
fi
if runs network; then
    python bench/bench_network.py report
fi
if runs install; then
    python bench/bench_install.py report
fi
if runs stats; then
    python bench/bench_stats.py report
fi
if runs snapshots; then
    python bench/bench_snapshots.py report
fi
if runs diskbus; then
    python bench/bench_diskbus.py report
fi
if runs web; then
    python bench/bench_web.py report
fi
if runs api; then
    python bench/bench_api.py report
fi
