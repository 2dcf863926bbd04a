#!/bin/sh
# Build a small offline tree from the host's static busybox, for fast tests.
#
#   bootstrap/busybox.sh DEST
#
# Needs only /bin/busybox (Debian: busybox-static). The tree is built in a temporary sibling
# of DEST and renamed into place when whole.
set -eu

dest=${1:?usage: busybox.sh DEST}
busybox=${BUSYBOX:-/bin/busybox}

[ -x "$busybox" ] || { echo "busybox.sh: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
    echo "busybox.sh: $busybox is dynamically linked; a static busybox is needed (busybox-static)" >&2
    exit 1
fi
[ ! -e "$dest" ] || { echo "busybox.sh: $dest already exists; remove it first" >&2; exit 1; }

parent=$(dirname "$dest")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.$(basename "$dest").tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

for d in bin sbin etc proc sys dev run tmp root home/tester var/tmp usr/bin usr/sbin; do
    mkdir -p "$tmp/$d"
done
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
chmod 700 "$tmp/root"
cp "$busybox" "$tmp/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$tmp/bin/$applet"
done
ln -s ../bin/busybox "$tmp/sbin/init"

cat > "$tmp/etc/os-release" <<'OS'
NAME="BusyBox"
ID=busybox
PRETTY_NAME="BusyBox test tree"
VERSION_ID=1
OS
cat > "$tmp/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
tester:x:1000:1000:tester:/home/tester:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$tmp/etc/group" <<'GR'
root:x:0:
tty:x:5:
users:x:100:tester
tester:x:1000:
nogroup:x:65534:
GR
chown 1000:1000 "$tmp/home/tester"
: > "$tmp/etc/machine-id"

chmod 755 "$tmp"
mv -T "$tmp" "$dest"
trap - EXIT INT TERM
