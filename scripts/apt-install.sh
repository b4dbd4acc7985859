# Sourced (not run) by scripts/install-deps.sh and tests/compat/install-extracted-servers.sh.
#
# apt_install PACKAGE...: apt-get update, then install the packages (as root), while
# /usr/sbin/policy-rc.d forbids their maintainer scripts to start system daemons: they may fail
# in a container, and would hold ports 143/993/6379/9090...  (exit 101 = "action forbidden",
# honoured by invoke-rc.d and deb-systemd-invoke.)  The policy file is removed again only if it
# was created here; existing configuration files are kept.
apt_install() {
    _apt_created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        _apt_created_policy=1
    fi
    trap _apt_remove_policy EXIT
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
    _apt_remove_policy
    trap - EXIT
}

_apt_remove_policy() {
    if [ "${_apt_created_policy:-0}" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        _apt_created_policy=0
    fi
}
