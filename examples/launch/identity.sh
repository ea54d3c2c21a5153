#!/usr/bin/env bash
# Launch the identity model the Dynamo way: a frontend and a worker as two processes that find
# each other through the key-value store. Ctrl-C (or the script exiting) stops both.
#
# Environment (Dynamo's names and defaults):
#   DYN_STORE_KV   file | etcd | mem   (default file; mem cannot span processes)
#   DYN_FILE_KV    folder of the file store
#   ETCD_ENDPOINTS etcd endpoints      (default http://localhost:2379)
#   DYN_GRPC_PORT  KServe gRPC port    (default 8787)
#   DYN_HTTP_PORT  HTTP port           (default 8000)
#   DYN_SYSTEM_PORT worker system port (default 8081)
#   DYN_LOG        log level           (default info)
# Options: --model-repository DIR, --backend-directory DIR, --log-verbose N (passed to the worker).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_REPOSITORY="${HERE}/../../model_repo"
WORKER_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model-repository) MODEL_REPOSITORY="$2"; shift 2 ;;
        --backend-directory|--log-verbose|--triton-home) WORKER_ARGS+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

export DYN_STORE_KV="${DYN_STORE_KV:-file}"
if [[ "${DYN_STORE_KV}" == "mem" ]]; then
    echo "DYN_STORE_KV=mem cannot connect two processes; use file or etcd (or 'dyntriton serve --store-kv mem')" >&2
    exit 2
fi
DYNTRITON="${DYNTRITON:-dyntriton}"

pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
}
trap cleanup EXIT INT TERM

"$DYNTRITON" frontend &
pids+=($!)
"$DYNTRITON" worker --model identity --model-repository "$MODEL_REPOSITORY" "${WORKER_ARGS[@]}" &
pids+=($!)

echo "frontend pid ${pids[0]}, worker pid ${pids[1]}; KServe gRPC on port ${DYN_GRPC_PORT:-8787}. Ctrl-C stops both."
wait -n "${pids[@]}"
