#!/bin/sh
# Install promtool (Debian's prometheus package) so the alert-rule test runs instead of skipping.
# Idempotent; exits non-zero with one line on stderr where it cannot be installed (the test then
# skips and says why).
set -eu
. "$(dirname "$0")/apt-install.sh"
command -v promtool >/dev/null 2>&1 || apt_install install-test-tools promtool prometheus
