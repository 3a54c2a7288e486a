#!/usr/bin/env bash
# Builds the Windows agent (caretaker-agent.exe) on this Linux machine, and runs it and its tests under Wine.
#
#   scripts/windows.sh build [--release]   caretaker-agent.exe in target/windows/x86_64-pc-windows-gnu/{debug,release}/
#   scripts/windows.sh check               type-checks the agent and its tests for Windows
#   scripts/windows.sh test [ARGS...]      the agent's unit tests, run under Wine
#   scripts/windows.sh msi [--release]     the MSI (installer/windows/caretaker-agent.wxs) around that build's .exe, stripped
#   scripts/windows.sh prefix              makes (once) the Wine prefix the tests use and prints its path
#   scripts/windows.sh wine ARGS...        runs Wine (64-bit) in that prefix
#
# rustup here has only the Linux target, so this uses Debian's own Rust (rustc-web, 1.96 or later,
# installed by scripts/install-test-deps.sh), whose standard library sources build for Windows with
# `-Zbuild-std`, and mingw's linker. The compiler, linker and runner are set the same way on every
# call: changing any of them rebuilds the standard library (about 100 s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$root/scripts/windows.sh wine"
export CARGO_TARGET_DIR="$root/target/windows"
export WINEPREFIX="${CARETAKER_WINEPREFIX:-$root/target/wine-prefix}"
export WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
target=x86_64-pc-windows-gnu
cargo_win=(/usr/bin/cargo)
# Debian puts Wine outside PATH.
wine=/usr/lib/wine/wine64
wineserver=/usr/lib/wine/wineserver

need() {
    if [ ! -x /usr/bin/rustc ] || [ ! -d /usr/lib/rustlib/src/rust/library ] || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
        echo "windows.sh: Debian's Rust with its library sources and mingw are needed: run scripts/install-test-deps.sh" >&2
        exit 1
    fi
}

# Wine 8.0 has no bcryptprimitives.dll, which every Rust program imports (ProcessPrng): build
# the stand-in from scripts/wine/bcryptprimitives.c and put it in the prefix.
prefix() {
    [ -x "$wine" ] || { echo "windows.sh: wine64 is needed: run scripts/install-test-deps.sh" >&2; exit 1; }
    if [ ! -f "$WINEPREFIX/system.reg" ]; then
        mkdir -p "$WINEPREFIX"
        "$wine" wineboot --init >/dev/null 2>&1
        "$wineserver" -w
    fi
    # Wine links the profile's Desktop, Documents, Downloads, Music, Pictures and Videos to
    # $HOME: make them plain folders, so nothing run in the prefix (the agent walks profiles)
    # reads or writes this machine's home.
    local link
    for link in "$WINEPREFIX"/drive_c/users/*/*; do
        if [ -L "$link" ]; then rm "$link" && mkdir "$link"; fi
    done
    local dll="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
    local src="$root/scripts/wine/bcryptprimitives.c"
    if [ ! -f "$dll" ] || [ "$src" -nt "$dll" ]; then
        x86_64-w64-mingw32-gcc -shared -O2 -Wl,--kill-at -o "$dll.tmp" "$src" -ladvapi32
        mv "$dll.tmp" "$dll"
    fi
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
    build)
        need
        profile=()
        [ "${1:-}" = "--release" ] && { profile=(--release); shift; }
        "${cargo_win[@]}" build -Zbuild-std=std,panic_abort --target "$target" -p caretaker-agent --bin caretaker-agent --locked "${profile[@]}" "$@"
        ;;
    check)
        need
        "${cargo_win[@]}" check -Zbuild-std=std,panic_abort --target "$target" -p caretaker-agent --all-targets --locked "$@"
        ;;
    test)
        need
        prefix
        "${cargo_win[@]}" test -Zbuild-std=std,panic_abort --target "$target" -p caretaker-agent --lib --locked "$@"
        ;;
    msi)
        profile=debug
        [ "${1:-}" = "--release" ] && profile=release
        dir="$CARGO_TARGET_DIR/$target/$profile"
        [ -f "$dir/caretaker-agent.exe" ] || { echo "windows.sh: $dir/caretaker-agent.exe is missing: run scripts/windows.sh build ${1:-}" >&2; exit 1; }
        version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
        msi="$dir/caretaker-agent-$version.msi"
        # The MSI ships the .exe stripped (symbols and line tables are most of its size), as the
        # .deb does; wixl reads sources relative to the working folder only.
        stage="$dir/msi-stage"
        rm -rf "$stage" && mkdir -p "$stage"
        x86_64-w64-mingw32-strip -o "$stage/caretaker-agent.exe" "$dir/caretaker-agent.exe"
        (cd "$stage" && wixl -a x64 -D Version="$version" -D AgentExe=caretaker-agent.exe \
            -o "$msi.tmp" "$root/installer/windows/caretaker-agent.wxs" 2> >(grep -v "GLib-GObject-WARNING\|^$" >&2))
        # wixl ignores `Secure`: a managed install passes only the properties listed here.
        msibuild "$msi.tmp" -q "UPDATE Property SET Value='BUNDLE;UNINSTALLCODE;WIX_DOWNGRADE_DETECTED;WIX_UPGRADE_DETECTED' WHERE Property='SecureCustomProperties'"
        mv "$msi.tmp" "$msi"
        echo "$msi"
        ;;
    prefix)
        prefix
        echo "$WINEPREFIX"
        ;;
    wine)
        prefix
        exec "$wine" "$@"
        ;;
    *)
        echo "usage: scripts/windows.sh build [--release] | check | test [ARGS] | msi [--release] | prefix | wine ARGS" >&2
        exit 2
        ;;
esac
