# Shared by the scripts: where PostgreSQL is, how to run things as the cluster's owner.
PG_MAJOR=15
# ES_PG_BIN: another PostgreSQL installation (a relocated copy lets checkouts test side by side).
PG_BIN=${ES_PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}
PG_CONFIG=$PG_BIN/pg_config
ES_RUN_DIR=${ES_RUN_DIR:-/var/tmp/event_store}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
    PG_OS_USER=postgres   # PostgreSQL refuses to run as root
else
    SUDO="sudo"
    PG_OS_USER=$(id -un)
fi

as_pg() {
    if [ "$(id -un)" = "$PG_OS_USER" ]; then "$@"; else sudo -u "$PG_OS_USER" -- "$@"; fi
}

# Builds and installs the extension into the system PostgreSQL (release build).
install_extension() {
    local flags=(--release --pg-config "$PG_CONFIG")
    [ -n "$SUDO" ] && flags+=(--sudo)
    cargo pgrx install "${flags[@]}" >/dev/null
    remove_stale_updates
}

# pgrx copies sql/'s update scripts but never removes one: an update script that is no longer
# in sql/ would still offer PostgreSQL a path. Install scripts (event_store--X.sql, which
# scripts/old-version.sh adds) are kept.
remove_stale_updates() {
    local f
    for f in "$($PG_CONFIG --sharedir)"/extension/event_store--*--*.sql; do
        [ -e "$f" ] && [ ! -e "sql/$(basename "$f")" ] && $SUDO rm -f "$f"
    done
    return 0
}

# cluster_start NAME PORT [PRELOAD] [EXTRA_CONF]: a scratch cluster under $ES_RUN_DIR, unix
# socket only. PRELOAD is shared_preload_libraries; EXTRA_CONF more postgresql.conf lines.
# A running cluster is restarted so that the settings apply.
cluster_start() {
    local name=$1 port=$2 preload=${3:-} extra=${4:-}
    local dir=$ES_RUN_DIR/$name
    $SUDO mkdir -p "$ES_RUN_DIR"
    $SUDO chmod 1777 "$ES_RUN_DIR"
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_pg mkdir -p "$dir"
        as_pg "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    as_pg tee "$dir/postgresql.auto.conf" >/dev/null <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$ES_RUN_DIR'
shared_preload_libraries = '$preload'
max_connections = 300
timescaledb.telemetry_level = off
fsync = on
$extra
CONF
    if as_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -m fast -w restart >/dev/null
    else
        as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    fi
}

cluster_stop() {
    local dir=$ES_RUN_DIR/$1
    [ -f "$dir/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

# psql against a scratch cluster: es_psql PORT DB [psql args...]
es_psql() {
    local port=$1 db=$2; shift 2
    "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h "$ES_RUN_DIR" -p "$port" -U postgres -d "$db" "$@"
}
