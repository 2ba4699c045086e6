#!/usr/bin/env bash
# scripts/old-version.sh VERSION: installs the SQL script of an older event_store (0.1.0,
# 0.2.0, 0.3.0, 0.4.0, 0.5.0 or 0.6.0), built from the git history, next to this version's, so that tests/upgrade.rs can
# create the extension at that version and update it. Each version is what main shipped up to
# the commit below (the script tags it vVERSION in this clone) and builds in a target directory
# shared by the old versions, kept between runs. Skipped when that script is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

VERSION=${1:?usage: scripts/old-version.sh VERSION}
case $VERSION in
    0.1.0) COMMIT=7b97d249c1556d247ec40c5de3a913b57c85d9ca ;;
    0.2.0) COMMIT=3e6ac6a46533d445ce58ea8d8773c398a8ee72b0 ;;
    0.3.0) COMMIT=8c1bf5759936ffcfcfb0d6e23cc7ca5e482e9a95 ;;
    0.4.0) COMMIT=135e3477d02581e3b0005f072bfe69bb50dec725 ;;
    0.5.0) COMMIT=aedc544d33ea8dcb297fdd7275386ca32c5b464a ;;
    0.6.0) COMMIT=a9a7523fd1283c25c011cfc0fad21690a3cd04ff ;;
    *) echo "old-version.sh: no commit known for $VERSION" >&2; exit 1 ;;
esac
DEST=$($PG_CONFIG --sharedir)/extension/event_store--$VERSION.sql
MARK="-- event_store $VERSION, built from $COMMIT"
if [ -f "$DEST" ] && [ "$(head -n1 "$DEST")" = "$MARK" ]; then
    exit 0
fi
echo "== building event_store $VERSION's SQL from $COMMIT"
git tag -f "v$VERSION" "$COMMIT" >/dev/null
TREE=$(mktemp -d "/var/tmp/event_store-$VERSION.XXXXXX")
trap 'rm -rf "$TREE"' EXIT
# Extracted with the time of extraction (-m), not the commit's: the old versions share a
# target directory, where a source file older than the last build of the same crate (the core
# crate of another version, at the same relative path) would be taken as built already.
git archive "v$VERSION" | tar -x -m -C "$TREE"
# A target directory of the old versions', kept between runs (they share its dependencies):
# this version's is not overwritten.
(cd "$TREE" && CARGO_TARGET_DIR=/var/tmp/event_store-old-target \
    cargo pgrx schema pg15 --pg-config "$PG_CONFIG" -o "$TREE/schema.sql" >/dev/null)
{ echo "$MARK"; cat "$TREE/schema.sql"; } | $SUDO tee "$DEST" >/dev/null
