#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need. Idempotent: each step is
# skipped when its result is already present, so a warm machine finishes in seconds.
set -euo pipefail

PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PGRX_VERSION=0.18.1
TSDB_SRC_DIR=${TSDB_SRC_DIR:-/var/tmp/event_store-timescaledb}

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
log() { printf '\n== setup: %s\n' "$*"; }

# 1. Debian packages.
PKGS=(sudo postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib
      libclang-dev clang cmake build-essential pkg-config libssl-dev dpkg-dev xz-utils
      python3 ca-certificates prometheus-postgres-exporter
      etcd-server python3-venv curl bc)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    echo "sudo is missing: run this script as root once" >&2; exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's etcd-server starts a default member where systemd runs; the HA tests run their own.
if command -v systemctl >/dev/null && systemctl is-active -q etcd 2>/dev/null; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
# Debian's postgresql package creates and starts a default cluster; we run our own.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  $SUDO pg_ctlcluster --force $PG_MAJOR main stop 2>/dev/null || true
fi

# 2. cargo-pgrx, pinned to the pgrx version in Cargo.toml.
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (10-15 minutes on 2 cores)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi

# 3. TimescaleDB, built from Debian 13's source package (Apache edition) against PostgreSQL 15.
PKGLIBDIR=$($PG_CONFIG --pkglibdir)
if ! ls "$PKGLIBDIR"/timescaledb*.so >/dev/null 2>&1; then
  log "building TimescaleDB from Debian's source package"
  SRC_LIST=/etc/apt/sources.list.d/event-store-timescaledb-src.sources
  if [ ! -f "$SRC_LIST" ]; then
    uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources | head -n1)
    [ -n "$uri" ] || { echo "cannot find the Debian mirror in debian.sources" >&2; exit 1; }
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
      | $SUDO tee "$SRC_LIST" >/dev/null
    $SUDO apt-get update -qq
  fi
  mkdir -p "$TSDB_SRC_DIR"
  (
    cd "$TSDB_SRC_DIR"
    ls timescaledb_*.orig.tar.* >/dev/null 2>&1 || apt-get source --download-only timescaledb
    rm -rf build-src && mkdir build-src
    tar -xf timescaledb_*.orig.tar.* -C build-src --strip-components=1
    cd build-src
    ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
      -DPG_CONFIG="$PG_CONFIG" >/dev/null
    make -C build -j"$(nproc)" >/dev/null
    $SUDO make -C build install >/dev/null
  )
fi

# 4. Node.js and the client example's packages (clients/node, locked in its package-lock.json).
if ! command -v npm >/dev/null; then
    log "installing Node.js"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
NODE_EXAMPLE=$(cd "$(dirname "$0")/../clients/node" && pwd)
if [ ! -d "$NODE_EXAMPLE/node_modules" ]; then
    log "installing the Node.js example's packages"
    (cd "$NODE_EXAMPLE" && npm ci --silent --no-audit --no-fund)
fi

# 5. The Python packages the eventsourcing recorders' tests need (clients/python, pinned).
if ! python3 -c "import eventsourcing, psycopg, psycopg_pool, Crypto, msgspec, pytest" 2>/dev/null; then
    log "installing the Python eventsourcing recorders' packages"
    python3 -m pip install -q -r "$(dirname "$0")/../clients/python/requirements.txt"
fi

# 6. Patroni for the HA tests (scripts/ha-cluster.sh), pinned, in a virtual environment of the
# system Python that the postgres user can read (Debian's patroni 3.0 has no quorum mode).
PATRONI_VENV=${PATRONI_VENV:-/opt/event_store-patroni}
if ! "$PATRONI_VENV/bin/patroni" --version 2>/dev/null | grep -q " 4.1.5"; then
    log "installing Patroni 4.1.5 into $PATRONI_VENV"
    $SUDO /usr/bin/python3 -m venv "$PATRONI_VENV"
    $SUDO "$PATRONI_VENV/bin/pip" install -q 'patroni[psycopg3,etcd3]==4.1.5'
    $SUDO chmod -R a+rX "$PATRONI_VENV"
fi

log "ready: $(cargo pgrx --version), PostgreSQL $($PG_CONFIG --version), $(ls "$PKGLIBDIR"/timescaledb-2*.so | xargs -n1 basename)"
