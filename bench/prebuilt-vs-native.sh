#!/usr/bin/env bash
# node-llama-cpp's prebuilt CPU binary against a native build of the same llama.cpp (its bundled
# source), on one GGUF, rounds alternating. Needs the native build first (offline, ~6 minutes on
# 2 cores):   npx node-llama-cpp source download --gpu false
# node-llama-cpp uses a local build whenever one exists, so the prebuilt rounds move it aside for
# the moment (and always put it back).
#   bash bench/prebuilt-vs-native.sh [model] [threads list] [rounds]
set -euo pipefail
model=${1:-models/synthetic/small.Q4_K_M.gguf}
threads=${2:-1,2}
rounds=${3:-2}
llama=node_modules/node-llama-cpp/llama
if [ ! -d "$llama/localBuilds" ]; then
  echo "no native build: run \`npx node-llama-cpp source download --gpu false\` first" >&2
  exit 1
fi
restore() {
  if [ -d "$llama/localBuilds.aside" ]; then mv "$llama/localBuilds.aside" "$llama/localBuilds"; fi
  if [ -f "$llama/lastBuild.json.aside" ]; then mv "$llama/lastBuild.json.aside" "$llama/lastBuild.json"; fi
}
trap restore EXIT
for ((round = 1; round <= rounds; round++)); do
  for t in ${threads//,/ }; do
    UV_THREADPOOL_SIZE=1 npx tsx bench/engine-throughput.ts "$model" "$t"
    mv "$llama/localBuilds" "$llama/localBuilds.aside"
    if [ -f "$llama/lastBuild.json" ]; then mv "$llama/lastBuild.json" "$llama/lastBuild.json.aside"; fi
    UV_THREADPOOL_SIZE=1 npx tsx bench/engine-throughput.ts "$model" "$t"
    restore
  done
done
