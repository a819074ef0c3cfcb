#!/bin/sh
# Creates this pod's recovery partition on its own volume, once. `python -m bytewax.recovery DIR N` creates
# partitions 0..N-1 of a set of N; with one volume per pod the cluster needs each partition on exactly one
# process, so N = BYTEWAX_PROCESSES and pod i keeps part-i. Bytewax finds the partitions across the processes
# at start and refuses an incomplete set. The count is fixed once created: to change the number of processes,
# delete the recovery volumes (the flow then starts without recovery state).
set -eu

: "${BYTEWAX_PROCESSES:?}"
dir="${BYTEWAX_RECOVERY_DIRECTORY:-/var/recovery}"
pod="${BYTEWAX_POD_NAME:?set BYTEWAX_POD_NAME to the pod name (fieldRef metadata.name)}"
ordinal="${pod##*-}"

if ls "$dir"/part-*.sqlite3 >/dev/null 2>&1; then
    echo "init-recovery: partitions present in $dir:" "$(ls "$dir")"
    exit 0
fi
rm -rf "$dir"/.init-*
scratch="$dir/.init-$$"
mkdir "$scratch"
python -m bytewax.recovery "$scratch" "$BYTEWAX_PROCESSES"
mv "$scratch/part-$ordinal.sqlite3" "$dir/"
rm -rf "$scratch"
echo "init-recovery: created partition $ordinal of $BYTEWAX_PROCESSES in $dir"
