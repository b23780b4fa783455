#!/bin/sh
# Install promtool (Debian's prometheus package) so the alert-rule test runs instead of skipping.
# Idempotent; exits non-zero with one line on stderr where it cannot be installed (the test then
# skips and says why).
set -eu
if command -v promtool >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: no promtool and no apt-get on this machine" >&2; exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install-test-tools: promtool is missing and apt-get needs root (run: sudo apt-get install prometheus)" >&2; exit 1
    fi
fi
echo "install-test-tools: installing promtool (Debian package prometheus) with apt-get" >&2
[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)" ] || $SUDO apt-get update -qq >/dev/null
# policy-rc.d 101: install without starting the Prometheus service.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ] && [ -z "$SUDO" ]; then printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod +x "$POLICY"; trap 'rm -f "$POLICY"' EXIT; fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
