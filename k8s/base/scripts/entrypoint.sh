#!/bin/sh
# Starts one process of the Bytewax cluster, as the Bytewax Helm chart lays a dataflow out: the process id is
# the pod's ordinal (the suffix of its name, serving-0, serving-1, ...) and the addresses file lists every
# pod of the StatefulSet through its headless Service, NAME-i.SERVICE.NAMESPACE.svc:PORT, in ordinal order.
set -eu

: "${BYTEWAX_STATEFULSET_NAME:?}" "${BYTEWAX_HEADLESS_SERVICE:?}" "${POD_NAMESPACE:?}"
: "${BYTEWAX_PROCESSES:?}" "${BYTEWAX_WORKERS_PER_PROCESS:?}"
port="${BYTEWAX_PORT:-2101}"
# Host of process {i}; the default is the pod's DNS name through the headless Service. Only a run outside
# Kubernetes changes it (tests/k8s/test_k8s.py puts process i on loopback address 127.0.0.1{i}).
pod_dns_name="${BYTEWAX_STATEFULSET_NAME}-{i}.${BYTEWAX_HEADLESS_SERVICE}.${POD_NAMESPACE}.svc"
template="${BYTEWAX_PEER_HOST_TEMPLATE:-$pod_dns_name}"
hostfile="${BYTEWAX_HOSTFILE_PATH:-/etc/bytewax/hostfile.txt}"

pod="${BYTEWAX_POD_NAME:?set BYTEWAX_POD_NAME to the pod name (fieldRef metadata.name)}"
ordinal="${pod##*-}"
case "$ordinal" in
    '' | *[!0-9]*)
        echo "entrypoint: cannot take a process id from pod name '$pod'" >&2
        exit 1
        ;;
esac
if [ "$ordinal" -ge "$BYTEWAX_PROCESSES" ]; then
    echo "entrypoint: pod ordinal $ordinal is not below BYTEWAX_PROCESSES=$BYTEWAX_PROCESSES;" \
        "change the StatefulSet's replicas and BYTEWAX_PROCESSES together" >&2
    exit 1
fi

: >"$hostfile"
i=0
while [ "$i" -lt "$BYTEWAX_PROCESSES" ]; do
    echo "${template%%"{i}"*}${i}${template#*"{i}"}:${port}" >>"$hostfile"
    i=$((i + 1))
done
addresses=$(paste -sd ';' "$hostfile")
# The live page at / of every process merges the whole cluster: each process's /state, on the same hosts.
state_port="${SERVING_STATE_PORT:-8081}"
if [ -z "${SERVING_STATE_PEERS:-}" ] && [ "$state_port" != 0 ]; then
    SERVING_STATE_PEERS=$(sed "s#:${port}\$#:${state_port}/state#; s#^#http://#" "$hostfile" | paste -sd ',')
    export SERVING_STATE_PEERS
fi
echo "entrypoint: process $ordinal of $BYTEWAX_PROCESSES," \
    "$BYTEWAX_WORKERS_PER_PROCESS workers each; addresses $addresses"

exec python -m bytewax.run "${BYTEWAX_FLOW:-flows.serving}" \
    -w "$BYTEWAX_WORKERS_PER_PROCESS" \
    -i "$ordinal" \
    -a "$addresses" \
    -r "${BYTEWAX_RECOVERY_STORE:-/var/recovery-store}/process-$ordinal" \
    -s "${BYTEWAX_SNAPSHOT_INTERVAL:-5}" \
    -b "${BYTEWAX_RECOVERY_BACKUP_INTERVAL:-0}"
