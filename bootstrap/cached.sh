#!/bin/sh
# Print the path of a cached tree built by a recipe in this directory, building it first if
# it is missing. The cache key is the recipe's content plus its arguments, so changing a
# recipe builds a new tree; concurrent callers wait for one build.
#
#   bootstrap/cached.sh RECIPE [ARGS...]     e.g. cached.sh debian bookworm
#
# Cache root: $MCTL_TEST_CACHE, default /var/cache/mctl-tests.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
recipe=${1:?usage: cached.sh RECIPE [ARGS...]}
shift
script="$here/$recipe.sh"
[ -f "$script" ] || { echo "cached.sh: no recipe $script" >&2; exit 1; }

cache=${MCTL_TEST_CACHE:-/var/cache/mctl-tests}
key=$( { cat "$script"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16)
dir="$cache/$recipe-$key"
mkdir -p "$cache"

exec 9>"$cache/.$recipe-$key.lock"
flock 9
if [ ! -d "$dir/rootfs" ]; then
    mkdir -p "$dir"
    "$script" "$dir/rootfs" "$@" >&2
fi
echo "$dir/rootfs"
