#!/usr/bin/env bash
# End-to-end test of `bash start.sh --ha` (docker-compose.ha.yml): two registry replicas on a
# three-member etcd of their own, and a three-node etcd raft given both replicas, with the
# real binaries in real containers.
#
#   bash tests/e2e/ha.sh
#
# tests/e2e/docker.sh runs it after the Swarm test with its own images
# (ROLLCALL_E2E_SHARED_IMAGES=1: one build for all); run alone, it builds its own and removes
# them. It uses its own project name and ports and removes every container, network and
# volume it created, however it ends. Where no Docker engine answers it says that it was
# skipped and exits 0, except under CI=true.
#
# What it checks, in order (issue 15's acceptance):
#   1. `bash start.sh --ha` ends with a healthy three-node raft, one replica active and the
#      other a standby
#   2. the active replica's container stopped: the other is active, and a new raft node
#      (a fourth, started then) is granted its role and listed within lease TTL + startup
#      grace + one interval of the stop (timed)
#   3. the stopped replica started again: it comes back as a standby
#   4. `bash start.sh down` removes the project, the registry's etcd and its volumes
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_dir"

slack="${ROLLCALL_E2E_SLACK:-5}"
e2e_tag=ha e2e_script=tests/e2e/ha.sh
# shellcheck source=tests/e2e/common.sh
source "$repo_dir/tests/e2e/common.sh"

require_docker
command -v python3 >/dev/null || fail "python3 is needed to read the registry's JSON"

# --- Own project, ports and (unless shared) images ------------------------------------------

export COMPOSE_PROJECT_NAME="rollcall-e2e-ha-$$"
if [[ ${ROLLCALL_E2E_SHARED_IMAGES:-} != 1 ]]; then
    export ROLLCALL_IMAGE_PREFIX="rollcall-e2e-ha"
    export ROLLCALL_IMAGE_TAG="$(date +%s)-$$"
fi
export ROLLCALL_ENGINE=etcd ROLLCALL_NODES=3 ROLLCALL_EXPECT=3 ROLLCALL_CLUSTER=default
# Short for a test; the defaults (10 s lease, 5 s interval) are for production.
export ROLLCALL_LEASE_TTL=3s ROLLCALL_INTERVAL=2s ROLLCALL_TTL=6s ROLLCALL_STARTUP_GRACE=4s
lease_s=3 interval_s=2 grace_s=4
unset ROLLCALL_TOKEN

ROLLCALL_REGISTRY_PORT="$(free_port)" || fail "no free loopback port"
ROLLCALL_REGISTRY_PORT_2="$(free_port)" || fail "no free loopback port"
[[ $ROLLCALL_REGISTRY_PORT != "$ROLLCALL_REGISTRY_PORT_2" ]] || fail "the same port twice"
export ROLLCALL_REGISTRY_PORT ROLLCALL_REGISTRY_PORT_2
replica_url=("http://127.0.0.1:$ROLLCALL_REGISTRY_PORT" "http://127.0.0.1:$ROLLCALL_REGISTRY_PORT_2")
replica_service=(bootstrap bootstrap-2)
# members_tsv (registry-view.sh) asks through the sidecar, which fails over between these.
registry="${replica_url[0]},${replica_url[1]}"
results_file="$repo_dir/target/e2e-ha-timings.txt"

if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    compose_cmd=(docker-compose)
fi
compose() {
    "${compose_cmd[@]}" -f "$repo_dir/docker-compose.yml" -f "$repo_dir/docker-compose.ha.yml" \
        -p "$COMPOSE_PROJECT_NAME" "$@"
}

cleanup() {
    local code=$?
    if [[ $code != 0 ]]; then
        say "state at failure:"
        compose ps 2>/dev/null || true
        compose logs --tail=15 bootstrap bootstrap-2 2>/dev/null | cut -c1-400 || true
        compose logs --tail=8 raft 2>/dev/null | cut -c1-300 || true
        if [[ ${ROLLCALL_E2E_KEEP:-} == 1 ]]; then
            say "ROLLCALL_E2E_KEEP=1: leaving project $COMPOSE_PROJECT_NAME running; remove it with:"
            say "  COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME bash start.sh down"
            exit "$code"
        fi
    fi
    bash start.sh down >/dev/null 2>&1 || true
    # Whatever start.sh could not remove, by this run's label and names.
    local ids
    ids="$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
    [[ -z $ids ]] || docker rm -f -v $ids >/dev/null 2>&1 || true
    ids="$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
    [[ -z $ids ]] || docker volume rm $ids >/dev/null 2>&1 || true
    ids="$(docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
    [[ -z $ids ]] || docker network rm $ids >/dev/null 2>&1 || true
    if [[ ${ROLLCALL_E2E_SHARED_IMAGES:-} != 1 ]]; then
        ids="$(docker images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$ROLLCALL_IMAGE_PREFIX/*:$ROLLCALL_IMAGE_TAG")"
        [[ -z $ids ]] || docker rmi $ids >/dev/null 2>&1 || true
    fi
    [[ $code != 0 ]] || rm -rf "${TMPDIR:-/tmp}/rollcall-start.$COMPOSE_PROJECT_NAME"
    say "cleaned up project $COMPOSE_PROJECT_NAME"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=tests/e2e/registry-view.sh
source "$repo_dir/tests/e2e/registry-view.sh"
record() { printf '%s\n' "$*" >>"$results_file"; }
: >"$results_file"

# A replica's role as its /health says it (active, standby, stale, unknown), or nothing.
role_of() { # index
    curl -fsS --max-time 2 "${replica_url[$1]}/health" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["replica"]["role"])' 2>/dev/null || true
}
active_index() {
    local i
    for i in 0 1; do
        [[ $(role_of "$i") == active ]] && { printf '%s' "$i"; return 0; }
    done
    return 1
}
one_active_one_standby() {
    local a b
    a="$(role_of 0)" b="$(role_of 1)"
    [[ ($a == active && $b == standby) || ($a == standby && $b == active) ]]
}

# --- 1. Deploy ---------------------------------------------------------------------------------

say "1. bash start.sh --ha (project $COMPOSE_PROJECT_NAME, replicas on ports $ROLLCALL_REGISTRY_PORT and $ROLLCALL_REGISTRY_PORT_2)"
deploy_log="$(mktemp)"
started=$SECONDS
bash start.sh --ha --engine etcd --nodes 3 --no-browser --timeout 180 >"$deploy_log" 2>&1 ||
    { cat "$deploy_log"; fail "start.sh --ha did not end with a healthy raft"; }
deployed_in=$((SECONDS - started))
grep -q 'replica' "$deploy_log" || { cat "$deploy_log"; fail "start.sh --ha did not show the replicas"; }
rm -f "$deploy_log"
wait_for 30 one_active_one_standby >/dev/null || fail "not one active and one standby replica: $(role_of 0) / $(role_of 1)"
healthy_raft 3 3 || fail "after start.sh --ha: not three healthy members"
pass "1. start.sh --ha took ${deployed_in}s: raft healthy, replicas $(role_of 0) / $(role_of 1)"
record "ha deploy: start.sh --ha ${deployed_in}s"

# --- 2. The active replica stopped; a new raft node starts meanwhile ------------------------------

active="$(active_index)" || fail "no active replica"
other=$((1 - active))
say "2. docker stop of the active replica (${replica_service[$active]}), then a fourth raft node"
stopped_at=$(date +%s.%N)
compose stop -t 10 "${replica_service[$active]}" >/dev/null 2>&1 || fail "could not stop ${replica_service[$active]}"
compose up -d --no-deps --no-recreate --scale raft=4 raft >/dev/null 2>&1 || fail "could not start a fourth raft node"
other_active() { [[ $(role_of "$other") == active ]]; }
took_active="$(wait_for $((lease_s + 20)) other_active)" || fail "the standby did not become active"
bound=$((lease_s + grace_s + interval_s))
# The fourth node: an agent (three servers fill expect=3), listed by the registry.
four_listed() { healthy_raft 4 3; }
wait_for $((bound + 60)) four_listed >/dev/null || fail "the fourth node was not listed ($(members_tsv | cut -f1,3 | tr '\n' ' '))"
since_stop="$(awk -v s="$stopped_at" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')"
awk -v t="$since_stop" -v b="$((bound + slack))" 'BEGIN { exit !(t <= b) }' ||
    fail "the fourth node was listed ${since_stop}s after the stop: more than lease ${lease_s}s + grace ${grace_s}s + interval ${interval_s}s + ${slack}s"
pass "2. ${replica_service[$other]} active ${took_active}s after the stop began; a new node listed in the raft ${since_stop}s after it (bound ${bound}s + ${slack}s)"
record "ha failover: standby active ${took_active}s after docker stop; a new node listed ${since_stop}s after it"

# --- 3. The stopped replica comes back as a standby ---------------------------------------------

say "3. docker start ${replica_service[$active]}"
compose start "${replica_service[$active]}" >/dev/null 2>&1 || fail "could not start ${replica_service[$active]}"
back_as_standby() { [[ $(role_of "$active") == standby ]]; }
took="$(wait_for 60 back_as_standby)" || fail "${replica_service[$active]} did not come back as a standby ($(role_of "$active"))"
[[ $(role_of "$other") == active ]] || fail "${replica_service[$other]} is no longer active"
pass "3. ${replica_service[$active]} back as a standby ${took}s after docker start"
record "ha restart: the stopped replica a standby ${took}s after docker start"

# --- 4. Down ------------------------------------------------------------------------------------

say "4. bash start.sh down"
bash start.sh down >/dev/null 2>&1 || fail "start.sh down failed"
left="$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
[[ -z $left ]] || fail "containers left: $left"
left="$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
[[ -z $left ]] || fail "volumes left: $left"
pass "4. project, registry etcd and volumes removed"
say "all ha steps passed in ${SECONDS}s; timings in $results_file"
