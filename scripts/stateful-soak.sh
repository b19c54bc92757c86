#!/bin/sh
# Run the stateful invariant checker (tests/real/test_invariants_stateful.py) for
# longer than CI does, with a seed, under the shared real-test lock.
#
#   scripts/stateful-soak.sh [SEED] [EXAMPLES] [STEPS] [MINUTES]
#
# Defaults: a seed from the clock (printed, so a failure can be replayed with it),
# 20 sequences of 30 steps, no time limit (MINUTES: steps after that budget do
# nothing, so the run ends cleanly with its statistics).  A failure prints the shortest sequence hypothesis found.
set -eu
cd "$(dirname "$0")/.."
seed=${1:-$(date +%s)}
examples=${2:-20}
steps=${3:-30}
minutes=${4:-0}
python=${PYTHON:-.venv/bin/python}
echo "stateful soak: seed $seed, $examples sequences of $steps steps"
exec flock /tmp/virtkit-real-tests.lock env PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" \
    VIRTKIT_STATEFUL_SEED="$seed" VIRTKIT_STATEFUL_EXAMPLES="$examples" \
    VIRTKIT_STATEFUL_STEPS="$steps" VIRTKIT_STATEFUL_MINUTES="$minutes" \
    "$python" -m pytest tests/real/test_invariants_stateful.py -q -s -p no:cacheprovider
