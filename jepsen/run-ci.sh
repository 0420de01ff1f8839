#!/usr/bin/env bash
# The fault suite's CI step (scripts/test.sh runs it): the checkers' unit tests, then
# `quorumdb-jepsen ci` (the checker's self-test, then all four workloads while every fault
# happens once; about 2.7 minutes). Needs root (network namespaces, nftables).
# Replay a failing run: JEPSEN_SEED=<seed from the summary line> jepsen/run-ci.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "jepsen: needs root (it creates network namespaces, veth pairs and nftables tables)" >&2
  exit 1
fi
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo nextest run --locked -p quorumdb-jepsen
cargo build --locked -p quorumdb --bin quorumdb -p quorumdb-jepsen --bin quorumdb-jepsen
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/debug/quorumdb-jepsen" ci ${JEPSEN_SEED:+--seed "$JEPSEN_SEED"}
