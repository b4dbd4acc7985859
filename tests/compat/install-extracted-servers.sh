#!/usr/bin/env bash
# Install Cyrus IMAP and Courier-IMAP for the compatibility tests (tests/test_compat_*.py)
# on Debian 12, as root, next to Dovecot and imap4d.
#
# cyrus-imapd and courier-imap declare "Conflicts: imap-server", which dovecot-imapd and
# mailutils-imap4d provide, so they cannot be installed as packages here.  Instead their .deb
# files are downloaded with `apt-get download` and unpacked (dpkg-deb -x) below $PREFIX, and
# only the libraries and helpers they need, none of which conflicts, are installed as packages.
# Nothing is configured system-wide and no daemon is started: tests/compat/cyrus.py and
# tests/compat/courier.py run private instances on 127.0.0.1.
#
#   PREFIX=/opt/imapmoveproxy-compat (default)   unpacked trees: $PREFIX/cyrus, $PREFIX/courier
#
# Idempotent: does nothing if both trees are complete.
set -euo pipefail

PREFIX="${PREFIX:-/opt/imapmoveproxy-compat}"
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "install-extracted-servers.sh: must run as root" >&2
    exit 1
fi

# Libraries of cyrus-common/cyrus-imapd, sasl2-bin (saslpasswd2 for the test users), and
# Courier's authentication library and daemon (they conflict with nothing).
libraries=(
    libsasl2-2 libsasl2-modules libsasl2-modules-db sasl2-bin libclamav12 libical3 libicu72
    libjansson4 libkrb5-3 libldap-2.5-0 libpcre3 libpq5 libsqlite3-0 libssl3 libwrap0
    libxapian30 libxml2 libzephyr4 zlib1g libcom-err2
    courier-authlib courier-authdaemon courier-authlib-userdb libcourier-unicode4 libgdbm6
    libidn12 libgamin0 libgnutls30
)

installed() {
    [ -x "$PREFIX/cyrus/usr/lib/cyrus/bin/master" ] && [ -x "$PREFIX/courier/usr/bin/imapd" ] \
        && [ -x "$PREFIX/courier/usr/sbin/couriertcpd" ] && [ -x /usr/sbin/saslpasswd2 ] \
        && [ -x /usr/sbin/authdaemond ]
}
if installed; then
    echo "install-extracted-servers.sh: already installed in $PREFIX"
    exit 0
fi

# Without starting daemons (saslauthd, courier-authdaemon): see scripts/apt-install.sh.
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$(readlink -f "$0")")/../../scripts/apt-install.sh"
apt_install "${libraries[@]}"

download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
if id _apt >/dev/null 2>&1; then chown _apt "$download"; fi  # apt downloads as _apt
(cd "$download" && apt-get download cyrus-imapd cyrus-common courier-imap courier-base)

rm -rf "$PREFIX/cyrus.new" "$PREFIX/courier.new"
mkdir -p "$PREFIX/cyrus.new" "$PREFIX/courier.new"
for deb in "$download"/cyrus-*.deb; do dpkg-deb -x "$deb" "$PREFIX/cyrus.new"; done
for deb in "$download"/courier-*.deb; do dpkg-deb -x "$deb" "$PREFIX/courier.new"; done
rm -rf "$PREFIX/cyrus" "$PREFIX/courier"
mv "$PREFIX/cyrus.new" "$PREFIX/cyrus"
mv "$PREFIX/courier.new" "$PREFIX/courier"

# Every shared library the unpacked binaries need must now resolve.
missing="$(
    LD_LIBRARY_PATH="$PREFIX/cyrus/usr/lib/x86_64-linux-gnu" \
        ldd "$PREFIX"/cyrus/usr/lib/cyrus/bin/{master,imapd,ctl_cyrusdb} \
            "$PREFIX"/courier/usr/bin/imapd "$PREFIX"/courier/usr/lib/courier/courier/imaplogin \
            "$PREFIX"/courier/usr/sbin/couriertcpd | grep 'not found' || true
)"
if [ -n "$missing" ]; then
    echo "install-extracted-servers.sh: unresolved libraries:" >&2
    echo "$missing" >&2
    exit 1
fi
echo "install-extracted-servers.sh: Cyrus and Courier unpacked in $PREFIX"
