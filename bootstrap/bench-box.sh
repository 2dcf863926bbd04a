#!/bin/sh
# Build the pure-cgroup2 bench box: the cached Debian tree plus what bench/launch.py runs
# inside it (python3, systemd-nspawn, bwrap, ip).
#
#   bootstrap/bench-box.sh DEST [SUITE]
#
# As debian.sh, the tree is built in a temporary sibling of DEST and renamed into place only
# when it is whole.
set -eu

dest=${1:?usage: bench-box.sh DEST [SUITE]}
suite=${2:-bookworm}
packages="python3 systemd-container bubblewrap iproute2"

[ "$(id -u)" = 0 ] || { echo "bench-box.sh: must run as root" >&2; exit 1; }
[ ! -e "$dest" ] || { echo "bench-box.sh: $dest already exists; remove it first" >&2; exit 1; }

base=$("$(dirname "$0")/cached.sh" debian "$suite")
parent=$(dirname "$dest")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.$(basename "$dest").tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
cp -a "$base/." "$tmp/"
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
# apt in a private mount namespace with its own /proc; nothing is mounted on the host.
unshare --mount --propagation private sh -c '
    mount -t proc proc "$1/proc"
    chroot "$1" apt-get update -q
    DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get install -y -q --no-install-recommends $2
' sh "$tmp" "$packages" >&2
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages "$tmp/etc/resolv.conf"
: > "$tmp/etc/machine-id"
chmod 755 "$tmp"
mv -T "$tmp" "$dest"
trap - EXIT INT TERM
