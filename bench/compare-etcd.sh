#!/usr/bin/env bash
# Side by side on this machine: a three-member etcd (Debian's etcd-server) and a three-node
# QuorumDB, both on loopback with fsync'd logs, driven by the same `quorumdb bench` matrix over
# the etcd v3 API. Systems alternate A B A B on fresh clusters; the table gives medians per row,
# the QuorumDB/etcd ratio, host CPU-milliseconds per 1,000 requests (all three members) and the
# peak RSS of the largest member.
#
#   bench/compare-etcd.sh                      # ROUNDS=2 DURATION=10 by default
#   ROUNDS=3 DURATION=20 bench/compare-etcd.sh
#   ETCD_CPU_SCHEDULING=batch bench/compare-etcd.sh   # etcd under SCHED_BATCH too (chrt -b 0)
#
# QuorumDB's threads run under SCHED_BATCH, its default (README, "Operating a cluster"); etcd
# runs as shipped (SCHED_OTHER) unless ETCD_CPU_SCHEDULING=batch. The table's header gives the
# policy each system's first member was seen running under.
#
# Every process it starts is killed by pid on exit; data lives in a temporary folder. The table
# also lists errors by round and gRPC code and QuorumDB's snapshots per member and round; the
# member logs of a round with errors are kept in /tmp/compare-etcd-logs-<system>-<round>.*.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
KEY_SPACE=10000
OUT=${OUT:-bench/results/$(date -u +%Y-%m-%d)-compare-etcd.md}
ETCD_CPU_SCHEDULING=${ETCD_CPU_SCHEDULING:-normal}
case $ETCD_CPU_SCHEDULING in
  normal) ETCD_LAUNCH=() ;;
  batch) ETCD_LAUNCH=(chrt -b 0) ;;
  *) echo "ETCD_CPU_SCHEDULING must be normal or batch (got $ETCD_CPU_SCHEDULING)" >&2; exit 2 ;;
esac

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
cargo build --release --locked --quiet
BIN=$PWD/target/release/quorumdb

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

CLIENT_PORTS=(24379 25379 26379)
PEER_PORTS=(24380 25380 26380)
METRICS_PORTS=(24381 25381 26381)
ENDPOINTS=$(printf 'http://127.0.0.1:%s,' "${CLIENT_PORTS[@]}"); ENDPOINTS=${ENDPOINTS%,}
FIRST_ENDPOINT=${ENDPOINTS%%,*}
MEMBERS=()

start_cluster() { # $1 = etcd | quorumdb, $2 = data folder
  local system=$1 data=$2 cluster="" i
  MEMBERS=()
  for i in 0 1 2; do cluster+="m$i=http://127.0.0.1:${PEER_PORTS[$i]},"; done
  cluster=${cluster%,}
  for i in 0 1 2; do
    local client="http://127.0.0.1:${CLIENT_PORTS[$i]}" peer="http://127.0.0.1:${PEER_PORTS[$i]}"
    if [ "$system" = etcd ]; then
      "${ETCD_LAUNCH[@]}" etcd --name "m$i" --data-dir "$data/m$i" --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" --initial-cluster "$cluster" \
        --initial-cluster-state new --log-level error >"$data/m$i.log" 2>&1 &
    else
      "$BIN" server --name "m$i" --data-dir "$data/m$i" --listen-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-cluster "$cluster" \
        --listen-metrics-urls "http://127.0.0.1:${METRICS_PORTS[$i]}" >"$data/m$i.log" 2>&1 &
    fi
    PIDS+=($!); MEMBERS+=($!)
  done
  for _ in $(seq 1 100); do
    if etcdctl --endpoints="${ENDPOINTS//http:\/\//}" endpoint health >/dev/null 2>&1; then
      echo "$system $(scheduling_policy "${MEMBERS[0]}")" >>"$POLICIES"
      return 0
    fi
    sleep 0.2
  done
  echo "$system did not become healthy; logs in $data" >&2
  exit 1
}

# The Linux scheduling policy a process runs under: field 41 of /proc/<pid>/stat.
scheduling_policy() {
  local policy
  policy=$(sed 's/.*) //' "/proc/$1/stat" | awk '{print $39}')
  case $policy in 0) echo SCHED_OTHER ;; 3) echo SCHED_BATCH ;; *) echo "policy-$policy" ;; esac
}

stop_cluster() {
  local pid
  for pid in "${MEMBERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${MEMBERS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

leader_endpoint() {
  etcdctl --endpoints="${ENDPOINTS//http:\/\//}" endpoint status -w json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print("http://" + s["Endpoint"]); break'
}

# Puts the first member in the lead, as in the other system: clients spread over the endpoints
# round robin from the first, so the leader's place decides how many requests followers forward
# (every one of them at one connection). QuorumDB's first member usually wins the first election,
# etcd's leader is any of the three: left so, one client's puts went to etcd's followers two
# rounds in three, at ~9% more CPU per put than at its leader (2026-12-06-fair-leader.md).
first_member_leads() { # $1 = system
  local id
  [ "$(leader_endpoint)" = "$FIRST_ENDPOINT" ] && return 0
  id=$(etcdctl --endpoints="${FIRST_ENDPOINT#http://}" endpoint status -w json |
    python3 -c 'import json, sys; print("%x" % json.load(sys.stdin)[0]["Status"]["header"]["member_id"])')
  etcdctl --endpoints="${ENDPOINTS//http:\/\//}" move-leader "$id" >/dev/null
  for _ in $(seq 1 50); do
    [ "$(leader_endpoint)" = "$FIRST_ENDPOINT" ] && return 0
    sleep 0.1
  done
  echo "$1: leadership did not move to the first member" >&2
  exit 1
}

cpu_ticks() { local total=0 pid; for pid in "${MEMBERS[@]}"; do
  total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$total"; }
peak_rss_kib() { local peak=0 pid rss; for pid in "${MEMBERS[@]}"; do
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status"); [ "$rss" -gt "$peak" ] && peak=$rss; done; echo "$peak"; }

# name workload clients conns target. put-1 meets the leader (the first member leads), put-1-follower
# a follower, which hands each write to the leader (forwarded in QuorumDB, proposed in etcd).
MATRIX="put-1 put 1 1 all
put-1-follower put 1 1 followers
put-16 put 16 4 all
put-64 put 64 8 all
put-256 put 256 16 all
put-1000 put 1000 32 all
get-linearizable-leader-1 range-linearizable 1 1 leader
get-linearizable-leader-1000 range-linearizable 1000 32 leader
get-linearizable-follower-1 range-linearizable 1 1 followers
get-linearizable-follower-1000 range-linearizable 1000 32 followers
get-serializable-1 range-serializable 1 1 all
get-serializable-1000 range-serializable 1000 32 all"

RESULTS=$WORK/results.jsonl
SNAPSHOTS=$WORK/snapshots.txt
POLICIES=$WORK/policies.txt
LEADERS=$WORK/leaders.txt
TICKS_PER_SECOND=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
  for system in quorumdb etcd; do
    data=$WORK/$system-$round; mkdir -p "$data"
    echo "round $round: $system" >&2
    start_cluster "$system" "$data"
    # Reads must find their keys: write the whole key space once.
    "$BIN" bench --endpoints "$ENDPOINTS" --workload put --total "$KEY_SPACE" --sequential-keys \
      --key-space "$KEY_SPACE" --clients 64 --conns 8 --json >/dev/null
    first_member_leads "$system"
    while read -r name workload clients conns target; do
      endpoints=$ENDPOINTS; extra=()
      case $target in
        leader) endpoints=$(leader_endpoint) ;;
        followers) extra=(--follower-only) ;;
      esac
      before=$(cpu_ticks)
      report=$("$BIN" bench --endpoints "$endpoints" --workload "$workload" --clients "$clients" --conns "$conns" \
        --duration "$DURATION" --key-space "$KEY_SPACE" --seed "$round" --json "${extra[@]}")
      after=$(cpu_ticks)
      echo "$report" | python3 -c '
import json, sys
r = json.load(sys.stdin)
name, system, round_, ticks, hz, rss = sys.argv[1:7]
cpu_ms = int(ticks) * 1000.0 / int(hz)
print(json.dumps({"row": name, "system": system, "round": int(round_), "qps": r["qps"],
  "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
  "errors": sum(r["errors"].values()), "error_codes": r["errors"],
  "error_samples": r.get("error_samples", {}),
  "cpu_ms_per_1k": cpu_ms / max(r["requests_ok"], 1) * 1000, "rss_mib": int(rss) / 1024}))' \
        "$name" "$system" "$round" "$((after - before))" "$TICKS_PER_SECOND" "$(peak_rss_kib)" >>"$RESULTS"
      echo "  $name done" >&2
    done <<<"$MATRIX"
    # Who led at the end: a leader change under load would shift the roles the clients met.
    led=$(leader_endpoint)
    if [ "$led" = "$FIRST_ENDPOINT" ]; then led=kept; else led="moved to $led"; fi
    echo "$system round $round: $led" >>"$LEADERS"
    if [ "$system" = quorumdb ]; then
      # Snapshots built, sent and installed per member: a follower that fell behind the log
      # kept after a snapshot catches up by one, and reads on it wait meanwhile.
      for i in 0 1 2; do
        counters=$(curl -s "http://127.0.0.1:${METRICS_PORTS[$i]}/metrics" |
          awk '/^quorumdb_snapshots_(built|sent|installed)_total/ {sub("quorumdb_snapshots_", ""); sub("_total", ""); printf "%s=%s ", $1, $2}')
        echo "round $round m$i: $counters" >>"$SNAPSHOTS"
      done
    fi
    stop_cluster
    # Any error in a round: keep its member logs outside the temporary folder.
    if python3 -c 'import json,sys; sys.exit(0 if any(json.loads(l)["errors"] and json.loads(l)["round"] == int(sys.argv[2]) and json.loads(l)["system"] == sys.argv[3] for l in open(sys.argv[1])) else 1)' "$RESULTS" "$round" "$system"; then
      kept=$(mktemp -d "/tmp/compare-etcd-logs-$system-$round.XXXX")
      cp "$data"/*.log "$kept"/
      echo "  errors in round $round of $system: member logs kept in $kept" >&2
    fi
  done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$ROUNDS" "$DURATION" "$(git rev-parse --short HEAD)" "$(nproc)" \
  "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" "$(etcd --version | head -1)" \
  "$SNAPSHOTS" "$POLICIES" "$LEADERS" <<'PY'
import json, statistics, sys, datetime
path, out, rounds, duration, commit, cores, cpu, etcd, snapshots, policies, leaders = sys.argv[1:12]
seen = {}
for line in open(policies):
    system, policy = line.split(maxsplit=1)
    seen.setdefault(system, set()).add(policy.strip())
policy_of = lambda system: " / ".join(sorted(seen.get(system, {"unknown"})))
rows = {}
for line in open(path):
    r = json.loads(line)
    rows.setdefault(r["row"], {}).setdefault(r["system"], []).append(r)
def med(items, key):
    return statistics.median(x[key] for x in items)
lines = [
    f"# QuorumDB vs etcd, side by side ({datetime.date.today().isoformat()})", "",
    f"- commit {commit}; {etcd}; {cores} cores ({cpu}); loopback; 3 members each; fsync'd logs",
    f"- {rounds} rounds alternating QuorumDB, etcd on fresh clusters; {duration} s per row; 8-byte keys,",
    "  256-byte values, 10,000 keys written before the reads; medians over rounds",
    "- CPU = host CPU-ms of all three members per 1,000 requests; RSS = peak of the largest member",
    f"- CPU scheduling policy seen: QuorumDB {policy_of('quorumdb')}, etcd {policy_of('etcd')}",
    "- the first member leads in both systems (moved there before the rows); clients spread over",
    "  the endpoints round robin from it. Leader at the end of each round: "
    + "; ".join(line.strip() for line in open(leaders)), "",
    "| row | QuorumDB req/s | etcd req/s | ratio | QuorumDB p50 / p99 ms | etcd p50 / p99 ms | QuorumDB CPU-ms/1k | etcd CPU-ms/1k | QuorumDB RSS MiB | etcd RSS MiB | errors Q/E |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
for name, by in rows.items():
    q, e = by["quorumdb"], by["etcd"]
    ratio = med(q, "qps") / med(e, "qps") if med(e, "qps") else float("nan")
    lines.append(
        f"| {name} | {med(q,'qps'):.0f} | {med(e,'qps'):.0f} | {ratio:.2f} | "
        f"{med(q,'p50'):.2f} / {med(q,'p99'):.2f} | {med(e,'p50'):.2f} / {med(e,'p99'):.2f} | "
        f"{med(q,'cpu_ms_per_1k'):.0f} | {med(e,'cpu_ms_per_1k'):.0f} | {max(x['rss_mib'] for x in q):.0f} | "
        f"{max(x['rss_mib'] for x in e):.0f} | {sum(x['errors'] for x in q)}/{sum(x['errors'] for x in e)} |")
errors = [json.loads(line) for line in open(path)]
errors = [r for r in errors if r["errors"]]
if errors:
    lines += ["", "Errors by round and gRPC code (the table's errors column sums the rounds):", ""]
    for r in errors:
        lines.append(f"- round {r['round']} {r['system']} {r['row']}: {r['error_codes']}")
        lines += [f"  - {code} from {s['first_at_secs']:.2f} s to {s['last_at_secs']:.2f} s, first: {s['first_message']}"
                  for code, s in r.get("error_samples", {}).items()]
lines += ["", "QuorumDB snapshots per member at the end of each round:", ""]
lines += [f"- {line.strip()}" for line in open(snapshots)]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "written to $OUT" >&2
