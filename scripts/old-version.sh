#!/usr/bin/env bash
# Installs the SQL script of event_store 0.1.0, built from the git history, next to this
# version's, so that tests/upgrade.rs can create the extension at 0.1.0 and update it.
# 0.1.0 is what main shipped up to the commit below; the script tags it v0.1.0 in this
# clone. Skipped when that script is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

COMMIT=7b97d249c1556d247ec40c5de3a913b57c85d9ca
DEST=$($PG_CONFIG --sharedir)/extension/event_store--0.1.0.sql
MARK="-- event_store 0.1.0, built from $COMMIT"
if [ -f "$DEST" ] && [ "$(head -n1 "$DEST")" = "$MARK" ]; then
    exit 0
fi
echo "== building event_store 0.1.0's SQL from $COMMIT"
git tag -f v0.1.0 "$COMMIT" >/dev/null
TREE=$(mktemp -d /var/tmp/event_store-0.1.0.XXXXXX)
trap 'rm -rf "$TREE"' EXIT
git archive v0.1.0 | tar -x -C "$TREE"
# A target directory of its own, kept between runs: this version's is not overwritten.
(cd "$TREE" && CARGO_TARGET_DIR=/var/tmp/event_store-0.1.0-target \
    cargo pgrx schema pg15 --pg-config "$PG_CONFIG" -o "$TREE/schema.sql" >/dev/null)
{ echo "$MARK"; cat "$TREE/schema.sql"; } | $SUDO tee "$DEST" >/dev/null
