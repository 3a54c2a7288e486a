#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real (idempotent: only what is missing).
#   clamav, clamav-daemon, faketime  real clamd and sigtool-built databases (antivirus tests)
#   dpkg-dev                         dpkg-deb for building tiny real packages (software tests)
#   xvfb, xdotool, i3lock, dbus, python3-dbusmock   a real X server, input, screen locker and logind mock (screen-lock tests)
#   python3-aiosmtpd                 a real SMTP server with STARTTLS and AUTH (digest tests)
#   qemu-system-x86 (bookworm-backports), busybox-static, kmod, dosfstools, mtools, xz-utils, binutils
#                                    a VM with Debian's kernel and a hot-plugged USB stick (removable-media tests)
#   chromium, chromium-driver, fonts-dejavu-core   a real headless browser over WebDriver, with fonts for screenshots (dashboard tests)
#   poppler-utils                    pdftotext and pdftoppm read the monitoring report's PDF (report tests)
#   openssh-server, openssh-client, iproute2, lintian, curl   sshd per network namespace, the .deb checked as Debian would, the API read inside a namespace (roll-out tests)
#   postgresql                       a real PostgreSQL (15 on bookworm), run as a private cluster on a socket, never as the service (PostgreSQL store tests)
#   rustc-web, cargo-web, rust-web-src (bookworm-security, 1.96 or later), gcc-mingw-w64-x86-64, wine64, msitools, wixl
#                                    Debian's Rust with its library sources and mingw build the Windows agent; Wine runs it and
#                                    its tests; wixl and msiinfo build and read its MSI (scripts/windows.sh)
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# QEMU comes from bookworm-backports: bookworm's own would replace the image's backported qemu-utils.
backports=/etc/apt/sources.list.d/caretaker-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $sudo tee "$backports" >/dev/null
fi

packages=(clamav clamav-daemon faketime dpkg-dev xvfb xdotool i3lock dbus python3-dbusmock x11-utils
          busybox-static kmod dosfstools mtools xz-utils binutils systemd
          chromium chromium-driver fonts-dejavu-core poppler-utils
          openssh-server openssh-client iproute2 lintian curl python3-aiosmtpd postgresql
          rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine64 msitools wixl)
backported=(qemu-system-x86 qemu-utils seabios)
missing=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
missing_bpo=()
for p in "${backported[@]}"; do installed "$p" || missing_bpo+=("$p"); done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bpo[@]} -gt 0 ]; then
    echo "Installing test packages: ${missing[*]} ${missing_bpo[*]}"
    # Keep Debian from starting clamd/freshclam: the tests run their own clamd on a private socket.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    if [ ${#missing[@]} -gt 0 ]; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if [ ${#missing_bpo[@]} -gt 0 ]; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports "${missing_bpo[@]}"
    fi
fi
# The Windows build needs the compiler its library sources were written for: bookworm's own
# rustc-web is 1.85, the security pocket's is 1.96 (rustup's 1.95 cannot build 1.96's sources).
rustc_web=$(/usr/bin/rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.96.0\n' "$rustc_web" | sort -V | head -1)" != "1.96.0" ]; then
    echo "install-test-deps.sh: Debian's rustc is $rustc_web; the Windows build needs 1.96 or later from bookworm-security (is it in the apt sources?)" >&2
    exit 1
fi
# On a machine where systemd runs, stop the system's own ClamAV services for the same reason.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now clamav-daemon.socket clamav-daemon clamav-freshclam >/dev/null 2>&1 || true
fi
