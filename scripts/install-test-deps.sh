#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real (idempotent: only what is missing).
#   clamav, clamav-daemon, faketime  real clamd and sigtool-built databases (antivirus tests)
#   dpkg-dev                         dpkg-deb for building tiny real packages (software tests)
#   xvfb, xdotool, i3lock, dbus, python3-dbusmock   a real X server, input, screen locker and logind mock (screen-lock tests)
set -euo pipefail

packages=(clamav clamav-daemon faketime dpkg-dev xvfb xdotool i3lock dbus python3-dbusmock x11-utils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing test packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Keep Debian from starting clamd/freshclam: the tests run their own clamd on a private socket.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# On a machine where systemd runs, stop the system's own ClamAV services for the same reason.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now clamav-daemon.socket clamav-daemon clamav-freshclam >/dev/null 2>&1 || true
fi
