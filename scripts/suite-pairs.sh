#!/usr/bin/env bash
# The main suite N times beside itself: two clones of HEAD run it at once, N times each; the
# first failure stops both. Summary lines go to stdout, each run's output to $OUT/<a|b>.<i>.log.
#   scripts/suite-pairs.sh [N]        (default 5: ten runs, each beside another)
set -uo pipefail
n=${1:-5}
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/suite-pairs.XXXXXX)"
chmod 755 "$work"  # tests that act as another user (nobody) read the clones
OUT=${OUT:-$work}
for side in a b; do git clone -q "$repo" "$work/$side"; done
run_side() {
    local side=$1
    for i in $(seq "$n"); do
        [ -e "$work/stop" ] && return
        local began=$SECONDS
        (cd "$work/$side" && CI=true scripts/test.sh -q -p no:cacheprovider) \
            > "$OUT/$side.$i.log" 2>&1
        local rc=$?
        echo "$side run $i rc=$rc $((SECONDS - began))s load $(cut -d' ' -f1-3 /proc/loadavg)" \
             ":: $(tail -1 "$OUT/$side.$i.log")"
        [ $rc = 0 ] || { touch "$work/stop"; return; }
    done
}
run_side a &
sleep 20  # the clones' venvs are built one after the other
run_side b &
wait
[ ! -e "$work/stop" ]
