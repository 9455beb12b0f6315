#!/usr/bin/env bash
# Installs OpenSSH's server (`/usr/sbin/sshd`) for the `ssh` backend's tests
# (tests/backend_ssh.rs), which start their own sshd on loopback as the current user.
# Idempotent: does nothing when sshd is already installed. Debian/Ubuntu only.
set -euo pipefail

if [ -x /usr/sbin/sshd ]; then
    echo "sshd: already installed ($(/usr/sbin/sshd -V 2>&1 | head -n1 || true))"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "sshd: not root and sudo is not available; install openssh-server by hand" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends openssh-server
echo "sshd: installed ($(/usr/sbin/sshd -V 2>&1 | head -n1 || true))"
