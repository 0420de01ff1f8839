#!/usr/bin/env bash
# The Compose deployment (deploy/compose), tested for real against the local Docker engine:
#
#   build the image -> compose up -> all three healthy -> 1,000 keys through node1, read back
#   linearizably on node3 -> docker kill the leader -> a new leader, every acknowledged key still
#   there -> start it again, it catches up -> cut a follower off the network (the others keep
#   serving, it refuses linearizable reads) -> reconnect it, it catches up -> compose down -v
#
# It prints the image size, the time from `compose up` to all healthy and the failover time
# (leader killed -> first acknowledged write). Every wait has a deadline and the whole run after
# the build is bounded (TEST_SECONDS_MAX); everything it creates carries a per-run project name
# and is removed on exit, failure included. Without a Docker engine it prints a SKIPPED line and
# succeeds; QUORUMDB_SKIP_COMPOSE_TEST=1 skips it the same way. Installs Docker Compose and
# etcdctl from Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_SECONDS_MAX=300
KEYS=1000
KEYS_PER_TXN=100
EXTRA_KEYS=100

log() { printf 'compose-test: %s\n' "$*"; }
fail() {
  printf 'compose-test: FAILED: %s\n' "$*" >&2
  exit 1
}
skip() {
  local banner='!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  printf '\n%s\nSKIPPED: compose test: %s\n%s\n\n' "$banner" "$*" "$banner"
  exit 0
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
now_ms() { date +%s%3N; }
seconds_since() { awk -v ms=$(($(now_ms) - $1)) 'BEGIN { printf "%.1f", ms / 1000 }'; }

# --- what the test needs ----------------------------------------------------------------------

if [ "${QUORUMDB_SKIP_COMPOSE_TEST:-}" = 1 ]; then
  skip "QUORUMDB_SKIP_COMPOSE_TEST=1"
fi
command -v docker >/dev/null 2>&1 || skip "no docker command on this machine"
timeout 30 docker info >/dev/null 2>&1 || skip "no Docker engine answers (docker info failed)"

compose_cmd=()
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
  else
    return 1
  fi
}
missing=()
find_compose || missing+=(docker-compose)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
find_compose || fail "Docker Compose is missing and apt-get could not install it"
command -v etcdctl >/dev/null 2>&1 || fail "etcdctl is missing and apt-get could not install it"
log "using ${compose_cmd[*]} ($("${compose_cmd[@]}" version --short 2>/dev/null || echo '?')), $(etcdctl version | head -1)"

# --- per-run names and cleanup ----------------------------------------------------------------

project="qdbcomposetest$(date +%s)$$"
image="quorumdb-compose-test:$project"
work=$(mktemp -d)
compose_up=
export QUORUMDB_IMAGE="$image"
# Host ports free now (a local cluster may hold 2379..32379) and fixed for the run: each member
# advertises its published URL, which must stay right across restarts.
read -r QUORUMDB_NODE1_CLIENT_PORT QUORUMDB_NODE2_CLIENT_PORT QUORUMDB_NODE3_CLIENT_PORT < <(
  python3 -c 'import socket
held = [socket.socket() for _ in range(3)]
for s in held: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))'
)
[ -n "${QUORUMDB_NODE3_CLIENT_PORT:-}" ] || fail "could not pick free ports (python3 is needed)"
export QUORUMDB_NODE1_CLIENT_PORT QUORUMDB_NODE2_CLIENT_PORT QUORUMDB_NODE3_CLIENT_PORT
binary="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/quorumdb"

compose() {
  timeout 180 "${compose_cmd[@]}" --project-name "$project" \
    --file deploy/compose/docker-compose.yml "$@"
}
dock() { timeout 60 docker "$@"; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$status" -ne 0 ] && [ -n "$compose_up" ]; then
    log "--- containers and their last logs, at the failure ---"
    compose ps || true
    compose logs --no-color --tail=40 || true
  fi
  if [ -n "$compose_up" ]; then
    compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 ||
      log "warning: compose down failed; remove project $project by hand"
  fi
  dock image rm "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers over the running cluster ---------------------------------------------------------

deadline_s=0 # set once the cluster starts: the whole run after the build is bounded

# wait_until SECONDS WHAT COMMAND...: retries COMMAND until it succeeds, or fails the test.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + seconds))
  if [ "$deadline_s" -gt 0 ] && [ "$deadline" -gt "$deadline_s" ]; then
    deadline=$deadline_s
  fi
  until "$@" >/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}

ectl() { ETCDCTL_API=3 timeout 30 etcdctl --dial-timeout=2s --command-timeout=5s "$@"; }

declare -A container port member_id
services=(node1 node2 node3)

refresh_port() { port[$1]=$(compose port "$1" 2379 2>/dev/null | tail -1 || true); }

# status_field SERVICE FIELD: one field of `etcdctl endpoint status` (exact 64-bit integers).
status_field() {
  ectl --endpoints="${port[$1]}" endpoint status -w fields 2>/dev/null |
    awk -F' : ' -v field="\"$2\"" '$1 == field { print $2; exit }'
}

healthy() { [ "$(dock inspect --format '{{.State.Health.Status}}' "${container[$1]}")" = healthy ]; }
all_healthy() {
  local service
  for service in "$@"; do healthy "$service" || return 1; done
}

# The service every listed member names as leader, if they agree on one.
leader_among() {
  local service leaders=() leader
  for service in "$@"; do
    leader=$(status_field "$service" Leader)
    [ -n "$leader" ] && [ "$leader" != 0 ] || return 1
    leaders+=("$leader")
  done
  [ "$(printf '%s\n' "${leaders[@]}" | sort -u | wc -l)" -eq 1 ] || return 1
  for service in "${services[@]}"; do
    if [ "${member_id[$service]}" = "${leaders[0]}" ]; then
      echo "$service"
      return 0
    fi
  done
  return 1
}

# write_keys SERVICE FIRST COUNT: puts key-FIRST.. through SERVICE, KEYS_PER_TXN per transaction;
# each acknowledged one goes into the expected contents.
write_keys() {
  local service=$1 first=$2 count=$3 start end i
  for ((start = first; start < first + count; start += KEYS_PER_TXN)); do
    end=$((start + KEYS_PER_TXN < first + count ? start + KEYS_PER_TXN : first + count))
    {
      echo # no compares
      for ((i = start; i < end; i++)); do printf 'put key-%04d value-%04d-%s\n' "$i" "$i" "$project"; done
      echo # no failure branch
      echo
    } >"$work/txn"
    ectl --endpoints="${port[$service]}" txn <"$work/txn" >"$work/txn.out" ||
      fail "transaction of keys $start..$((end - 1)) through $service failed"
    [ "$(head -1 "$work/txn.out")" = SUCCESS ] && [ "$(grep -c '^OK$' "$work/txn.out")" -eq $((end - start)) ] ||
      fail "transaction of keys $start..$((end - 1)) through $service: $(head -3 "$work/txn.out")"
    for ((i = start; i < end; i++)); do printf 'key-%04d\nvalue-%04d-%s\n' "$i" "$i" "$project"; done >>"$work/expected"
  done
}

# holds_every_key SERVICE [l|s]: the member returns exactly the acknowledged keys and values.
holds_every_key() {
  ectl --endpoints="${port[$1]}" get --prefix key- --consistency="${2:-l}" >"$work/read.$1" 2>/dev/null &&
    cmp -s "$work/expected" "$work/read.$1"
}
check_every_key() {
  holds_every_key "$1" "${2:-l}" || fail "$1 does not return the $(($(wc -l <"$work/expected") / 2)) acknowledged keys (consistency ${2:-l}); diff: $(diff "$work/expected" "$work/read.$1" | head -5)"
}

# caught_up SERVICE REFERENCE: SERVICE has applied as much as REFERENCE (revision and Raft index)
# and serves every key from its own state, without asking the leader (serializable).
caught_up() {
  refresh_port "$1"
  [ -n "${port[$1]}" ] || return 1
  local revision applied reference_revision reference_applied
  revision=$(status_field "$1" Revision)
  applied=$(status_field "$1" RaftAppliedIndex)
  reference_revision=$(status_field "$2" Revision)
  reference_applied=$(status_field "$2" RaftAppliedIndex)
  [ -n "$revision" ] && [ "$revision" = "$reference_revision" ] &&
    [ -n "$applied" ] && [ "$applied" -ge "$reference_applied" ] &&
    holds_every_key "$1" s
}

probe_in() { dock exec "${container[$1]}" /quorumdb probe --timeout-ms 2000 "${@:2}" >/dev/null 2>&1; }
not_ready() { ! probe_in "$1"; }

# --- 1. the image -----------------------------------------------------------------------------

build_started=$(now_ms)
log "building $image"
deploy/docker/build-image.sh "$image"
build_seconds=$(seconds_since "$build_started")
image_bytes=$(dock image inspect --format '{{.Size}}' "$image")
image_size=$(awk -v b="$image_bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }')

# --- 2. up, healthy ---------------------------------------------------------------------------

run_started=$(now_ms)
deadline_s=$(($(date +%s) + TEST_SECONDS_MAX))
log "compose up (project $project)"
compose_up=1
up_started=$(now_ms)
compose up --detach
for service in "${services[@]}"; do
  container[$service]=$(compose ps -q "$service")
  [ -n "${container[$service]}" ] || fail "no container for $service"
done
wait_until 120 "all three members healthy" all_healthy "${services[@]}"
up_to_healthy=$(seconds_since "$up_started")
log "all three healthy ${up_to_healthy} s after compose up"
for service in "${services[@]}"; do
  refresh_port "$service"
  member_id[$service]=$(status_field "$service" MemberID || true)
  [ -n "${member_id[$service]}" ] || fail "no member id from $service at ${port[$service]}"
done
network=$(dock inspect --format '{{range $name, $settings := .NetworkSettings.Networks}}{{$name}}{{end}}' "${container[node1]}")

# --- 3. writes through node1, linearizable reads on node3 -------------------------------------

: >"$work/expected"
write_keys node1 0 "$KEYS"
check_every_key node3
log "$KEYS keys written through node1 and read back linearizably on node3"
# Our own client from the host: given one member, it discovers the others by their advertised
# (published) URLs and finds the leader.
[ "$(timeout 30 "$binary" get --endpoints "${port[node2]}" key-0999 --print-value-only)" = "value-0999-$project" ] ||
  fail "quorumdb get through node2 did not return key-0999"
timeout 30 "$binary" endpoint status --endpoints "${port[node3]}" >"$work/status" ||
  fail "quorumdb endpoint status: $(cat "$work/status")"
log "quorumdb get and endpoint status from the host work against the cluster"

# --- 4. kill the leader -----------------------------------------------------------------------

wait_until 30 "an agreed leader" leader_among "${services[@]}"
old_leader=$(leader_among "${services[@]}")
survivors=()
for service in "${services[@]}"; do [ "$service" = "$old_leader" ] || survivors+=("$service"); done
survivor_endpoints="${port[${survivors[0]}]},${port[${survivors[1]}]}"
log "killing the leader $old_leader"
killed=$(now_ms) # before the kill: the failover time includes docker's own delay
dock kill "${container[$old_leader]}" >/dev/null
failover_write() {
  ETCDCTL_API=3 timeout 10 etcdctl --dial-timeout=1s --command-timeout=2s \
    --endpoints="$survivor_endpoints" put failover "written-after-$old_leader-died" >/dev/null 2>&1
}
wait_until 60 "a write acknowledged after the leader was killed" failover_write
failover_seconds=$(seconds_since "$killed")
log "first write acknowledged ${failover_seconds} s after the kill"
wait_until 30 "the survivors to agree on a new leader" leader_among "${survivors[@]}"
new_leader=$(leader_among "${survivors[@]}")
[ "$new_leader" != "$old_leader" ] || fail "the killed member is still named leader"
log "new leader: $new_leader"
for service in "${survivors[@]}"; do
  check_every_key "$service"
  [ "$(ectl --endpoints="${port[$service]}" get failover --print-value-only)" = "written-after-$old_leader-died" ] ||
    fail "$service lost the write acknowledged after the failover"
done
printf 'failover\nwritten-after-%s-died\n' "$old_leader" >"$work/failover.expected"

# --- 5. restart it; it catches up -------------------------------------------------------------

restarted=$(now_ms)
dock start "${container[$old_leader]}" >/dev/null
wait_until 60 "$old_leader to catch up after its restart" caught_up "$old_leader" "$new_leader"
log "$old_leader restarted and caught up in $(seconds_since "$restarted") s"
wait_until 60 "$old_leader healthy again" healthy "$old_leader"

# --- 6. cut a follower off the network, then heal --------------------------------------------

wait_until 30 "an agreed leader" leader_among "${services[@]}"
leader=$(leader_among "${services[@]}")
followers=()
for service in "${services[@]}"; do [ "$service" = "$leader" ] || followers+=("$service"); done
cut=${followers[0]}
connected=("$leader" "${followers[1]}")
log "disconnecting the follower $cut from $network"
dock network disconnect "$network" "${container[$cut]}"
write_keys "${connected[1]}" "$KEYS" "$EXTRA_KEYS"
for service in "${connected[@]}"; do check_every_key "$service"; done
log "the other two kept serving: $EXTRA_KEYS more keys through ${connected[1]}, read back on both"
wait_until 30 "the cut-off $cut to report itself not ready" not_ready "$cut"
probe_in "$cut" --serializable || fail "the cut-off $cut is not even alive (serializable probe failed)"
log "$cut, cut off, refuses linearizable reads (probe: not ready) but is alive"
# The service name is an alias on the network; give it back, or the peers cannot resolve it.
dock network connect --alias "$cut" "$network" "${container[$cut]}"
healed=$(now_ms)
wait_until 60 "$cut to catch up after reconnecting" caught_up "$cut" "$leader"
log "$cut reconnected and caught up in $(seconds_since "$healed") s"
wait_until 30 "$cut ready again" probe_in "$cut"
for service in "${services[@]}"; do
  ectl --endpoints="${port[$service]}" get failover >"$work/failover.$service" &&
    cmp -s "$work/failover.expected" "$work/failover.$service" ||
    fail "$service lost the failover write"
done

# --- 7. down -v -------------------------------------------------------------------------------

compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || fail "compose down failed"
compose_up=
log "compose down -v: containers, network and volumes removed"

log "image $image: $image_size ($image_bytes bytes), built in $build_seconds s"
log "compose up -> all three healthy: $up_to_healthy s (Docker checks every 3 s)"
log "failover (docker kill of the leader -> first acknowledged write): $failover_seconds s"
log "PASSED in $(seconds_since "$run_started") s after the image build"
