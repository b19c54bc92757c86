#!/usr/bin/env bash
# Refresh the web console's vendored browser libraries from the npm registry.
# Build time only: the files are committed under src/virtkit/web/static/vendor, so
# neither Node.js nor npm is needed where virtkit runs.
set -euo pipefail
cd "$(dirname "$0")/.."
NOVNC=${NOVNC:-1.7.0}
XTERM=${XTERM:-6.0.0}
FIT=${FIT:-0.11.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund \
    "@novnc/novnc@$NOVNC" "@xterm/xterm@$XTERM" "@xterm/addon-fit@$FIT")
vendor=src/virtkit/web/static/vendor
rm -rf "$vendor"
mkdir -p "$vendor/novnc" "$vendor/xterm"
cp -r "$work/node_modules/@novnc/novnc/core" "$work/node_modules/@novnc/novnc/vendor" \
    "$work/node_modules/@novnc/novnc/LICENSE.txt" "$vendor/novnc/"
cp "$work/node_modules/@xterm/xterm/lib/xterm.mjs" "$work/node_modules/@xterm/xterm/css/xterm.css" \
    "$work/node_modules/@xterm/xterm/LICENSE" "$work/node_modules/@xterm/addon-fit/lib/addon-fit.mjs" \
    "$vendor/xterm/"
echo "vendored noVNC $NOVNC, xterm.js $XTERM, addon-fit $FIT into $vendor"
