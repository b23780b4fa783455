#!/bin/sh
# Install what the browser test needs: Debian's chromium (apt) and playwright-core (npm, into
# tests/browser/node_modules). Idempotent and quick when everything is already there.
# Exit 0 when ready; non-zero (with one line on stderr) when Chromium cannot be installed here.
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
BROWSER_DIR="$HERE/tests/browser"

if ! command -v chromium >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-browser: no chromium and no apt-get on this machine" >&2; exit 1
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
            echo "install-browser: chromium is missing and apt-get needs root (run: sudo apt-get install chromium)" >&2; exit 1
        fi
    fi
    echo "install-browser: installing chromium with apt-get" >&2
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-browser: npm is missing (apt-get install npm)" >&2; exit 1
    fi
    echo "install-browser: installing playwright-core with npm" >&2
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --silent 2>/dev/null || npm install --no-audit --no-fund --silent)
fi
echo "install-browser: chromium $(chromium --version 2>/dev/null | head -1) and playwright-core ready" >&2
