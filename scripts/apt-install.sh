# Sourced by the install scripts: apt_install WHO COMMAND PACKAGE installs Debian's PACKAGE (which
# provides COMMAND) as root or through password-less sudo, without starting any service it ships.
# Fails with one line on stderr where that is impossible.
apt_install() {
    who=$1; command=$2; package=$3
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$who: no $command and no apt-get on this machine" >&2; return 1
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
            echo "$who: $command is missing and apt-get needs root (run: sudo apt-get install $package)" >&2; return 1
        fi
    fi
    echo "$who: installing $command (Debian package $package) with apt-get" >&2
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)" ] \
        || $SUDO apt-get update -qq >/dev/null
    # policy-rc.d 101: packages that ship a service (prometheus) must not start it here.
    policy=/usr/sbin/policy-rc.d
    created=""
    if [ ! -e "$policy" ] && [ -z "$SUDO" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1
    fi
    status=0
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$package" >/dev/null || status=$?
    [ -z "$created" ] || rm -f "$policy"
    return $status
}
