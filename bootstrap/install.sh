#!/bin/sh
# Installs mctl system-wide, once: binaries, systemd units, D-Bus policy and activation file.
#
#   bootstrap/install.sh               build a release, then install it
#   MCTL_BUILD_DIR=DIR bootstrap/install.sh
#                                      install prebuilt binaries from DIR instead
#   bootstrap/install.sh --uninstall   remove what an install put in place
#
# Places: /usr/local/bin/{mctl,mctld,mctl-runc}, /usr/local/lib/systemd/system/ (units),
# /etc/dbus-1/system.d/ (bus policy), /usr/local/share/dbus-1/system-services/ (activation),
# shell completions (bash, zsh, fish) and man pages under /usr/local/share, made by the
# installed mctl from its own command line.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bindir=/usr/local/bin
unitdir=/usr/local/lib/systemd/system
policydir=/etc/dbus-1/system.d
servicedir=/usr/local/share/dbus-1/system-services
bashdir=/usr/local/share/bash-completion/completions
zshdir=/usr/local/share/zsh/site-functions
fishdir=/usr/local/share/fish/vendor_completions.d
mandir=/usr/local/share/man/man1

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

reload() {
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    # dbus-daemon notices new policy files by itself; asking makes it immediate.
    if [ -S /run/dbus/system_bus_socket ] && command -v busctl >/dev/null 2>&1; then
        busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null || true
    fi
}

if [ "${1:-}" = "--uninstall" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now mctl-machines.target mctld.service >/dev/null 2>&1 || true
    fi
    rm -f "$bindir/mctl" "$bindir/mctld" "$bindir/mctl-runc" "$unitdir/mctl@.service" "$unitdir/mctld.service" \
        "$unitdir/mctl-machines.target" "$policydir/org.mctl.Machine1.conf" "$servicedir/org.mctl.Machine1.service" \
        "$bashdir/mctl" "$zshdir/_mctl" "$fishdir/mctl.fish" "$mandir/mctl.1" "$mandir"/mctl-*.1
    reload
    echo "mctl uninstalled (images in /var/lib/machines are kept)"
    exit 0
fi

if [ -z "${MCTL_BUILD_DIR:-}" ]; then
    (cd "$here" && cargo build --release --locked)
    # The build names the host as its target (.cargo/config.toml).
    MCTL_BUILD_DIR="$here/target/$(rustc -vV | sed -n 's/^host: //p')/release"
fi
for b in mctl mctld mctl-runc; do
    [ -x "$MCTL_BUILD_DIR/$b" ] || { echo "install.sh: $MCTL_BUILD_DIR/$b is missing; build first" >&2; exit 1; }
done

install -d "$bindir" "$unitdir" "$policydir" "$servicedir" /var/lib/machines
install -m 0755 "$MCTL_BUILD_DIR/mctl" "$MCTL_BUILD_DIR/mctld" "$MCTL_BUILD_DIR/mctl-runc" "$bindir/"
install -m 0644 "$here/units/mctl@.service" "$here/units/mctld.service" "$here/units/mctl-machines.target" "$unitdir/"
install -m 0644 "$here/dbus/org.mctl.Machine1.conf" "$policydir/"
install -m 0644 "$here/dbus/org.mctl.Machine1.service" "$servicedir/"
install -d "$bashdir" "$zshdir" "$fishdir" "$mandir"
"$bindir/mctl" completions bash > "$bashdir/mctl"
"$bindir/mctl" completions zsh > "$zshdir/_mctl"
"$bindir/mctl" completions fish > "$fishdir/mctl.fish"
"$bindir/mctl" man "$mandir"
chmod 0644 "$bashdir/mctl" "$zshdir/_mctl" "$fishdir/mctl.fish" "$mandir"/mctl*.1
reload
echo "mctl installed: mctl start NAME boots /var/lib/machines/NAME as mctl@NAME.service"
