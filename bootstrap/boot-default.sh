#!/bin/sh
# The main job in one command: build mctl, make the default image if there is none, boot it.
#
#   bootstrap/boot-default.sh [MCTL-BOOT-OPTIONS...]
#
# The image is a Debian bookworm tree at $MCTL_IMAGE_STORE/bookworm (default
# /var/lib/machines/bookworm). Log in as root (no password); press ^] three times to kill
# the machine, or run `poweroff` inside.
set -eu
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "boot-default.sh: run as root" >&2; exit 1; }
# Build needs: libseccomp (the system call filter); the image needs debootstrap.
missing=""
dpkg -s libseccomp-dev >/dev/null 2>&1 || missing="$missing libseccomp-dev"
if ! command -v debootstrap >/dev/null 2>&1 && ! command -v mmdebstrap >/dev/null 2>&1; then
    missing="$missing debootstrap"
fi
if [ -n "$missing" ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi
cargo build --release --locked
store=${MCTL_IMAGE_STORE:-/var/lib/machines}
[ -d "$store/bookworm" ] || bootstrap/debian.sh "$store/bookworm" bookworm
# The build names the host as its target (.cargo/config.toml).
exec "target/$(rustc -vV | sed -n 's/^host: //p')/release/mctl" boot -D "$store/bookworm" "$@"
