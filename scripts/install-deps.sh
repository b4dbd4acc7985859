#!/usr/bin/env bash
# Install the Debian 12 packages `make demo` or `make test` needs, as root, without starting any
# system daemon.  Idempotent, and quick when everything is there (one dpkg-query, no apt-get).
#
#   scripts/install-deps.sh demo|test
#
# The lists are scripts/packages-<target>.txt, one Debian package a line (# starts a comment).
# For `test` it also unpacks Cyrus and Courier (tests/compat/install-extracted-servers.sh) and
# stops system IMAP daemons that may be running: the tests start private instances.
#
# Environment:
#   SKIP_DEPS=1      install and check nothing (not Debian, or everything installed by hand)
#   CI_FORCE_APT=1   run apt-get update/install even if every package is already installed
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")/.."
target="${1:-}"
list="scripts/packages-$target.txt"
if [ -z "$target" ] || [ ! -f "$list" ]; then
    echo "usage: scripts/install-deps.sh demo|test (the list scripts/packages-<name>.txt)" >&2
    exit 2
fi
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')

if [ "${SKIP_DEPS:-0}" = 1 ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null \
        || ! command -v dpkg-query >/dev/null; then
    cat >&2 <<MSG
make $target: this is not Debian, so the packages cannot be installed for you.
Install the equivalents of these Debian 12 packages (scripts/packages-$target.txt):
    ${packages[*]}
then run it as root with SKIP_DEPS=1:  make $target SKIP_DEPS=1
MSG
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    cat >&2 <<MSG
make $target: must run as root: it installs Debian packages, and the IMAP servers it starts
switch to their own users (dovenull, dovecot, nobody).  Run:  sudo make $target
MSG
    exit 1
fi

# One query for all: "<package> <status>" for the installed ones.
installed="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null || true)"
missing=()
for pkg in "${packages[@]}"; do
    if ! grep -qx "$pkg installed" <<<"$installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ] || [ "${CI_FORCE_APT:-0}" = 1 ]; then
    echo "make $target: installing Debian packages: ${missing[*]:-(forced) ${packages[*]}}"
    # shellcheck source=scripts/apt-install.sh
    source scripts/apt-install.sh
    apt_install "${packages[@]}"
fi

if [ "$target" != test ]; then
    exit 0
fi

# Stop system daemons that may be running (e.g. installed earlier, or started by systemd):
# the tests run their own private instances and need nothing from them.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    for unit in dovecot.service dovecot.socket haproxy.service mailutils-imap4d.service; do
        systemctl stop "$unit" >/dev/null 2>&1 || true
    done
else
    if [ -s /run/dovecot/master.pid ]; then
        dovecot stop >/dev/null 2>&1 || true
    fi
    if [ -s /run/haproxy.pid ]; then
        kill "$(cat /run/haproxy.pid)" >/dev/null 2>&1 || true
    fi
fi

# Users the tests rely on: 'nobody' (mail owner) from base-passwd, 'dovenull' and 'dovecot'
# from dovecot-core.
for user in nobody dovenull dovecot; do
    if ! id "$user" >/dev/null 2>&1; then
        echo "make test: system user '$user' is missing" >&2
        exit 1
    fi
done
for bin in dovecot imap4d haproxy promtool; do
    if ! command -v "$bin" >/dev/null; then
        echo "make test: '$bin' not found after installation" >&2
        exit 1
    fi
done

# Cyrus and Courier conflict with Dovecot as packages: unpacked beside it for the
# compatibility tests (idempotent; see the script).
bash tests/compat/install-extracted-servers.sh
