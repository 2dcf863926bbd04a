#!/bin/sh
# Build a bootable Debian tree (systemd as init, dbus) with debootstrap or mmdebstrap.
#
#   bootstrap/debian.sh DEST [SUITE] [MIRROR]
#
# The tree is built in a temporary sibling of DEST and renamed into place only when it is
# whole, so an interrupted run leaves no half-built DEST. Root has no password so that the
# console login of a booted machine works; give it one before exposing the machine.
set -eu

dest=${1:?usage: debian.sh DEST [SUITE] [MIRROR]}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
packages=systemd-sysv,dbus

[ "$(id -u)" = 0 ] || { echo "debian.sh: must run as root (debootstrap needs it)" >&2; exit 1; }
[ ! -e "$dest" ] || { echo "debian.sh: $dest already exists; remove it first" >&2; exit 1; }

parent=$(dirname "$dest")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.$(basename "$dest").tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

if command -v mmdebstrap >/dev/null 2>&1; then
    mmdebstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror"
elif command -v debootstrap >/dev/null 2>&1; then
    debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror"
else
    echo "debian.sh: neither mmdebstrap nor debootstrap is installed (apt-get install debootstrap)" >&2
    exit 1
fi

# A fresh machine gets its identity at first boot, not the build host's.
: > "$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id" "$tmp/etc/hostname"
chroot "$tmp" passwd -d root >/dev/null
# Downloaded packages are only dead weight in an image.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages

chmod 755 "$tmp"
mv -T "$tmp" "$dest"
trap - EXIT INT TERM
