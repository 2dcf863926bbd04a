#!/bin/sh
# The whole test suite, as CI runs it (.ci/run calls exactly this).
#
# As root it installs what the tests need with apt-get, builds the fixture trees (cached under
# /var/cache/mctl-tests, keyed by recipe), checks formatting and lints, and runs every test:
# the integration tests boot real machines, so they need root.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "run-all.sh: the integration tests need root (namespaces, mounts, cgroups);" >&2
    echo "run-all.sh: running the unit tests only" >&2
    exec cargo test --locked --lib
fi

need="debootstrap busybox-static systemd-container dbus util-linux nftables iproute2 libseccomp-dev python3-jeepney libcap2-bin"
missing=""
for p in $need; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

bootstrap/cached.sh busybox >/dev/null
bootstrap/cached.sh debian bookworm >/dev/null

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --no-fail-fast -- --test-threads=2
