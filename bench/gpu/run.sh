#!/usr/bin/env bash
# The GPU device run's entry (copied into the kit by `npm run gpu:kit`). It
# unpacks the kit's Node.js, project and llama.cpp source into a work folder
# (once per kit: a second call on a warm machine resumes), then hands over to
# bench/gpu/device.ts with every argument:
#   bash .gpu-kit/run.sh --out DIR [--backend cuda|cpu] [--work DIR] [more device.ts options]
set -euo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
work=${AIRAVATA_GPU_WORK:-/tmp/airavata-gpu}
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
  if [[ ${args[i]} == --work ]]; then work=${args[i + 1]}; fi
done
mkdir -p "$work"
work=$(cd "$work" && pwd)

unpack() {
  echo "unpacking $1" >&2
  if command -v xz >/dev/null; then
    tar -C "$work" -xJf "$kit/$1.tar.xz"
  else
    # extractall's filter argument is Python 3.12's (and 3.8.17+ backports); older ones lack it.
    python3 -c '
import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    try:
        archive.extractall(sys.argv[2], filter="tar")
    except TypeError:
        archive.extractall(sys.argv[2])
' "$kit/$1.tar.xz" "$work"
  fi
}
# A new kit replaces the programs; what the run made (builds, models) stays.
if ! cmp -s "$kit/kit.json" "$work/kit.json"; then
  rm -rf "$work/bin" "$work/app" "$work/llama-src"
  unpack node
  unpack app
  unpack llama-src
  cp "$kit/kit.json" "$work/kit.json"
fi
cd "$work/app"
exec "$work/bin/node" --import tsx bench/gpu/device.ts --work "$work" "$@"
