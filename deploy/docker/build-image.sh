#!/usr/bin/env bash
# Builds the QuorumDB container image: a fully static release binary in an image FROM scratch
# (no base image to pull or patch), with a default config and a data volume.
#
#   deploy/docker/build-image.sh [TAG]        # default tag: quorumdb:latest
#
# The binary is x86_64 glibc linked statically (+crt-static). The explicit --target keeps that
# flag off build scripts and proc macros, and the getrandom cfg makes it call getrandom(2) instead
# of opening /dev/urandom, which an empty root does not have. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag="${1:-quorumdb:latest}"
target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-target}"
binary="$target_dir/$target/release/quorumdb"
context="$target_dir/docker-context"

command -v docker >/dev/null 2>&1 || { echo "build-image: docker is not installed" >&2; exit 1; }

RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
  cargo build --release --locked --target "$target" --bin quorumdb

# A dynamically linked binary would fail in the empty image with a baffling "no such file or
# directory" (its loader is missing): refuse it here instead.
if command -v readelf >/dev/null 2>&1 && readelf --program-headers "$binary" | grep -q INTERP; then
  echo "build-image: $binary is not static (it names a program interpreter)" >&2
  exit 1
fi

rm -rf "$context"
mkdir -p "$context/data"
cp "$binary" "$context/quorumdb"
cp deploy/docker/quorumdb.toml deploy/docker/Dockerfile "$context/"
docker build --tag "$tag" "$context"
size_bytes=$(docker image inspect --format '{{.Size}}' "$tag")
echo "build-image: built $tag, $((size_bytes / 1024 / 1024)) MiB ($size_bytes bytes)"
