#!/bin/sh
# Install what the browser test needs: Debian's chromium (apt) and playwright-core (npm, into
# tests/browser/node_modules). Idempotent and quick when everything is already there.
# Exit 0 when ready; non-zero (with one line on stderr) when Chromium cannot be installed here.
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
BROWSER_DIR="$HERE/tests/browser"
. "$HERE/scripts/apt-install.sh"

command -v chromium >/dev/null 2>&1 || apt_install install-browser chromium chromium

if [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-browser: npm is missing (apt-get install npm)" >&2; exit 1
    fi
    echo "install-browser: installing playwright-core with npm" >&2
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --silent 2>/dev/null || npm install --no-audit --no-fund --silent)
fi
echo "install-browser: chromium $(chromium --version 2>/dev/null | head -1) and playwright-core ready" >&2
