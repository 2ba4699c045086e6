#!/usr/bin/env bash
# A highly available cluster on loopback: one etcd and three PostgreSQL nodes under Patroni,
# event_store preloaded on each, quorum synchronous replication (docs/high-availability.md).
#
#   scripts/ha-cluster.sh start DIR PORT [PRELOAD]   etcd on PORT and PORT+1; node N (1-3)
#                                                    PostgreSQL on PORT+10+N, Patroni's REST
#                                                    API on PORT+20+N; returns once a leader
#                                                    and two streaming replicas are up
#   scripts/ha-cluster.sh node DIR N                 starts node N's Patroni again
#   scripts/ha-cluster.sh stop DIR                   stops everything and removes DIR
#
# Take PORT below 32768: ports in the ephemeral range may be held by outgoing connections.
# PRELOAD is shared_preload_libraries (default event_store). Timings are short so that a
# failover takes seconds (ttl 20 s is Patroni's documented floor; tests run with 10 s).
# Needs scripts/setup.sh (etcd-server, Patroni in $PATRONI_VENV).
set -euo pipefail
. "$(dirname "$0")/common.sh"
PATRONI_VENV=${PATRONI_VENV:-/opt/event_store-patroni}

node_config() {
    local dir=$1 port=$2 n=$3 preload=$4
    local pg=$((port + 10 + n)) rest=$((port + 20 + n))
    cat <<YAML
scope: event_store_ha
name: node$n
restapi:
  listen: 127.0.0.1:$rest
  connect_address: 127.0.0.1:$rest
etcd3:
  hosts: 127.0.0.1:$port
bootstrap:
  dcs:
    ttl: ${ES_HA_TTL:-10}
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 16777216
    synchronous_mode: quorum
    synchronous_mode_strict: true
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        synchronous_commit: 'on'
        wal_log_hints: 'on'
        hot_standby: 'on'
        max_connections: 100
        max_worker_processes: 16
        shared_preload_libraries: '$preload'
        timescaledb.telemetry_level: 'off'
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1:$pg
  connect_address: 127.0.0.1:$pg
  data_dir: $dir/node$n/data
  bin_dir: $PG_BIN
  pgpass: $dir/node$n/pgpass
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: replicator}
  parameters:
    unix_socket_directories: '$dir'
    fsync: 'off'
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication replicator 127.0.0.1/32 trust
YAML
}

start_node() {
    local dir=$1 n=$2
    as_pg sh -c "cd '$dir/node$n' || exit 1; setsid '$PATRONI_VENV/bin/patroni' patroni.yml >>patroni.log 2>&1 & echo \$! > patroni.pid"
}

# Waits until the nodes answer: one leader and two replicas streaming from it.
wait_ready() {
    local dir=$1 port=$2 deadline=$((SECONDS + 120)) state
    while [ $SECONDS -lt $deadline ]; do
        state=$(curl -s "http://127.0.0.1:$((port + 21))/cluster" 2>/dev/null || true)
        if [ "$(grep -o '"state": *"\(running\|streaming\)"' <<<"$state" | wc -l)" -eq 3 ] &&
           grep -q '"role": *"leader"' <<<"$state"; then
            return 0
        fi
        sleep 0.5
    done
    echo "the HA cluster did not come up: $state" >&2
    tail -n 5 "$dir"/node*/patroni.log >&2
    return 1
}

case ${1:-} in
start)
    dir=$2 port=$3 preload=${4:-event_store}
    $SUDO mkdir -p "$dir" && $SUDO chown "$PG_OS_USER" "$dir" && $SUDO chmod 700 "$dir"
    as_pg sh -c "cd '$dir' || exit 1; setsid etcd --name es --data-dir '$dir/etcd' \
        --listen-client-urls http://127.0.0.1:$port --advertise-client-urls http://127.0.0.1:$port \
        --listen-peer-urls http://127.0.0.1:$((port + 1)) \
        --initial-advertise-peer-urls http://127.0.0.1:$((port + 1)) \
        --initial-cluster es=http://127.0.0.1:$((port + 1)) >>etcd.log 2>&1 & echo \$! > etcd.pid"
    for n in 1 2 3; do
        as_pg mkdir -p "$dir/node$n"
        node_config "$dir" "$port" "$n" "$preload" | as_pg tee "$dir/node$n/patroni.yml" >/dev/null
    done
    start_node "$dir" 1
    # The first node bootstraps alone, so that it is the leader the others clone.
    deadline=$((SECONDS + 60))
    until curl -sf "http://127.0.0.1:$((port + 21))/primary" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "node1 did not become the leader" >&2; tail -20 "$dir/node1/patroni.log" >&2; exit 1; }
        sleep 0.5
    done
    start_node "$dir" 2
    start_node "$dir" 3
    wait_ready "$dir" "$port"
    ;;
node)
    start_node "$2" "$3"
    ;;
stop)
    dir=$2
    for f in "$dir"/node*/patroni.pid "$dir"/etcd.pid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
    done
    for d in "$dir"/node*/data; do
        [ -f "$d/postmaster.pid" ] && kill -9 "$(head -n1 "$d/postmaster.pid")" 2>/dev/null || true
    done
    sleep 0.2
    $SUDO rm -rf "$dir"
    ;;
*)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
