#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then runs the same gate
# everyone runs before a commit (format, lints, every test). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# protoc: the etcd-client dev-dependency compiles its protos with the system protoc (our own
# build uses the vendored one). etcdctl 3.4: the etcd compatibility test drives the server with it.
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
# chromium: tests/status_page.rs renders the live status page in a real headless browser.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --locked --no-fail-fast
# The Compose deployment for real when a Docker engine answers (else a loud SKIPPED line).
./scripts/compose-test.sh
# The Jepsen-style fault suite: real processes, nftables partitions, kills, pauses, a checker
# that must catch a planted anomaly (jepsen/README.md). Needs root.
./jepsen/run-ci.sh
