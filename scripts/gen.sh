#!/usr/bin/env bash
# Generates src/gen from proto/ and the standard health and reflection protos,
# which come from their npm packages (not pasted into this repository).
# With --check, generates into a temporary folder and fails if src/gen differs.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=.proto-vendor
rm -rf "$vendor"
mkdir -p "$vendor/grpc/health/v1" "$vendor/grpc/reflection"
cp node_modules/grpc-health-check/proto/health/v1/health.proto "$vendor/grpc/health/v1/"
cp -r node_modules/@grpc/reflection/build/proto/grpc/reflection/v1 \
      node_modules/@grpc/reflection/build/proto/grpc/reflection/v1alpha "$vendor/grpc/reflection/"
export PATH="$PWD/node_modules/.bin:$PATH"
buf lint
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  buf generate --template '{"version":"v2","clean":true,"plugins":[{"local":"protoc-gen-es","out":"'"$tmp"'/gen","opt":["target=ts","import_extension=js"]}]}'
  if ! diff -r "$tmp/gen" src/gen >/dev/null; then
    echo "src/gen is out of date with proto/: run 'npm run gen' and commit the result" >&2
    diff -r "$tmp/gen" src/gen | head -20 >&2
    exit 1
  fi
  echo "src/gen is in sync with proto/"
else
  buf generate
fi
