#!/bin/sh
# The whole test suite, as CI runs it (.ci/run calls exactly this).
#
# As root it installs what the tests need with apt-get, builds the fixture trees (cached under
# /var/cache/mctl-tests, keyed by recipe), checks formatting and lints, and runs every test:
# the integration tests boot real machines, so they need root.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    if [ "${MCTL_TESTS_UNIT_ONLY:-}" = 1 ]; then
        echo "run-all.sh: MCTL_TESTS_UNIT_ONLY=1: the unit tests only (no integration test runs)" >&2
        exec cargo test --locked --lib
    fi
    echo "run-all.sh: the integration tests need root (namespaces, mounts, cgroups): run as root," >&2
    echo "run-all.sh: or set MCTL_TESTS_UNIT_ONLY=1 to run only the unit tests" >&2
    exit 1
fi

need="debootstrap openssl busybox-static systemd-container fdisk e2fsprogs dbus man-db util-linux nftables iproute2 libseccomp-dev python3 python3-jeepney libcap2-bin file xz-utils zstd gcc libc6-dev docker-registry skopeo umoci runc podman conmon containerd"
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
# The summary counts what ran, so a suite that silently ran nothing cannot pass unnoticed.
log=$(mktemp)
rc=$(mktemp)
# Launches leave the shared `mctl` cgroup at each hierarchy's root for the next one (as Docker
# keeps `docker`); the suite takes that trace along when it is empty, also after a failure.
leave_no_cgroups() {
    for d in /sys/fs/cgroup/mctl /sys/fs/cgroup/*/mctl; do
        if [ -d "$d" ]; then rmdir "$d" 2>/dev/null || true; fi
    done
}
trap 'rm -f "$log" "$rc"; leave_no_cgroups' EXIT
# (|| keeps set -e from ending the block before the status is written.)
{ status=0; cargo test --locked --no-fail-fast -- --test-threads=2 || status=$?; echo "$status" > "$rc"; } 2>&1 | tee "$log"
awk '
    /Running unittests/ { kind = "unit" }
    /Running tests\// { kind = "integration"; files++ }
    /Doc-tests/ { kind = "doc" }
    /^test result:/ { n[kind] += $4; failed += $6 }
    END {
        printf "run-all.sh: %d integration tests in %d files, %d unit tests, %d failed\n",
            n["integration"], files, n["unit"], failed
        if (n["integration"] == 0) { print "run-all.sh: no integration test ran"; exit 1 }
    }' "$log" || exit 1
exit "$(cat "$rc")"
