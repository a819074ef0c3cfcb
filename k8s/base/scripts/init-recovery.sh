#!/bin/sh
# Prepares this pod's recovery directory in the cluster's shared recovery store (recovery-store.yaml):
# process i runs with `-r STORE/process-i`. Pod 0 creates the store once, sized by BYTEWAX_RECOVERY_PARTITIONS
# (at least the most workers the deployment will ever run: the count is fixed at creation); the other pods
# wait for it. A store laid out for another number of processes is refused: the regroup Job moves the
# partitions first (k8s/README.md, "Scaling"). Starting anyway would leave partitions unread, or hand one
# partition to two processes.
set -eu

: "${BYTEWAX_PROCESSES:?}" "${BYTEWAX_WORKERS_PER_PROCESS:?}" "${BYTEWAX_RECOVERY_PARTITIONS:?}"
store="${BYTEWAX_RECOVERY_STORE:-/var/recovery-store}"
pod="${BYTEWAX_POD_NAME:?set BYTEWAX_POD_NAME to the pod name (fieldRef metadata.name)}"
ordinal="${pod##*-}"
wait_s="${BYTEWAX_RECOVERY_WAIT_S:-300}"

has_partitions() { ls "$1"/part-*.sqlite3 >/dev/null 2>&1; }

if [ "$ordinal" = 0 ] && ! has_partitions "$store"/process-0; then
    serving-recovery-store init "$store" --partitions "$BYTEWAX_RECOVERY_PARTITIONS" \
        --processes "$BYTEWAX_PROCESSES" --workers-per-process "$BYTEWAX_WORKERS_PER_PROCESS"
fi
waited=0
until has_partitions "$store/process-$ordinal"; do
    if [ "$waited" -ge "$wait_s" ]; then
        echo "init-recovery: no recovery partitions in $store/process-$ordinal after ${wait_s}s" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done
laid_out=$(find "$store" -mindepth 1 -maxdepth 1 -type d -name 'process-*' | wc -l)
if [ "$laid_out" -ne "$BYTEWAX_PROCESSES" ]; then
    echo "init-recovery: $store is laid out for $laid_out processes, BYTEWAX_PROCESSES is $BYTEWAX_PROCESSES;" \
        "stop every pod and run the regroup Job first (k8s/README.md, Scaling)" >&2
    exit 1
fi
serving-recovery-store show "$store"
