#!/usr/bin/env bash
# Builds the Debian packages of the agent and the collector with dpkg-deb from a staged tree:
#   scripts/build-debs.sh [--version V] [--bin-dir DIR] [--out DIR] [--fast]
# Without --bin-dir it first runs `cargo build --release --locked` for the three binaries.
# Writes OUT/caretaker-agent_V_ARCH.deb (agent + caretaker-installer) and
# OUT/caretaker-collector_V_ARCH.deb; OUT defaults to target/debian, V to the workspace version.
# Packaging files (control, maintainer scripts, conffiles, default config): installer/debian/.
# --fast compresses with gzip -1 instead of xz (the tests use it; ship the xz ones).
# Needs dpkg-dev (dpkg-shlibdeps works out Depends) and binutils (strip).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
bin_dir=""
out=target/debian
compress=(-Zxz)
# Who the packages name as maintainer; a school that rebuilds them sets its own.
maintainer=${CARETAKER_DEB_MAINTAINER:-Caretaker maintainers <caretaker@example.org>}
while [ $# -gt 0 ]; do
    case "$1" in
        --version) version=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --fast) compress=(-Zgzip -z1); shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-debs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$bin_dir" ]; then
    cargo build --release --locked -p caretaker-agent -p caretaker-collector -p caretaker-installer
    bin_dir=target/release
fi
for b in caretaker-agent caretaker-installer caretaker-collector; do
    [ -x "$bin_dir/$b" ] || { echo "build-debs.sh: $bin_dir/$b is missing; build it first or leave out --bin-dir" >&2; exit 1; }
done
arch=$(dpkg --print-architecture)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# package NAME BINARIES...: stage installer/debian/NAME plus the binaries, unit and docs, then build.
package() {
    local name=$1; shift
    local root="$work/$name" src="installer/debian/$name"
    install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/share/doc/$name"
    for b in "$@"; do
        # Stripped: the packages go to hundreds of laptops. Backtraces keep function names.
        strip --strip-unneeded -o "$root/usr/bin/$b" "$bin_dir/$b"
        chmod 0755 "$root/usr/bin/$b"
    done
    install -m 0644 "installer/systemd/$name.service" "$root/lib/systemd/system/"
    install -m 0644 installer/debian/copyright "$root/usr/share/doc/$name/copyright"
    # A native package (no Debian revision), so changelog.gz, not changelog.Debian.gz.
    printf '%s (%s) unstable; urgency=medium\n\n  * Built from the Caretaker workspace.\n\n -- %s  %s\n' \
        "$name" "$version" "$maintainer" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
        | gzip -9n > "$root/usr/share/doc/$name/changelog.gz"
    if [ -f "$src/conffiles" ]; then
        install -m 0644 "$src/conffiles" "$root/DEBIAN/conffiles"
        while read -r f; do
            install -D -m 0644 "$src/$(basename "$f")" "$root$f"
        done < "$src/conffiles"
    fi
    if [ -f "$src/lintian-overrides" ]; then
        install -D -m 0644 "$src/lintian-overrides" "$root/usr/share/lintian/overrides/$name"
    fi
    for s in postinst prerm postrm; do
        install -m 0755 "$src/$s" "$root/DEBIAN/$s"
    done
    # Depends from the binaries' shared libraries, as Debian's own packages work it out.
    mkdir -p "$work/shlibs-$name/debian"
    printf 'Source: caretaker\n\nPackage: %s\nArchitecture: any\n' "$name" > "$work/shlibs-$name/debian/control"
    local depends
    depends=$(cd "$work/shlibs-$name" && dpkg-shlibdeps -O "${@/#/-e$root/usr/bin/}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
    [ -n "$depends" ] || { echo "build-debs.sh: dpkg-shlibdeps found no dependencies for $name" >&2; exit 1; }
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" -e "s/@MAINTAINER@/$maintainer/" \
        "$src/control" > "$root/DEBIAN/control"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"
    local deb="$out/${name}_${version}_${arch}.deb"
    dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
    echo "$deb"
}

package caretaker-agent caretaker-agent caretaker-installer
package caretaker-collector caretaker-collector
