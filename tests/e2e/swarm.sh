#!/usr/bin/env bash
# End-to-end test of the Swarm deployment: `bash start.sh --swarm` (docker-stack.yml) on a
# single-node swarm, with the real registry and sidecar binaries and a real etcd raft.
#
#   bash tests/e2e/swarm.sh
#
# tests/e2e/docker.sh runs it at its end with its own images (ROLLCALL_E2E_SHARED_IMAGES=1:
# one build for both); run alone, it builds its own and removes them. It uses its own stack
# name, overlay subnet and registry port, and removes every service, container, volume,
# network and secret it created, and the swarm when start.sh made it, however it ends. Where
# no Docker engine answers it says that it was skipped and exits 0, except under CI=true.
#
# What it checks, in order (issue 16's acceptance):
#   1. `bash start.sh --swarm` deploys the stack and ends with a healthy three-node raft (timed)
#   2. a value written through one task is read back through another
#   3. `docker service update --force` of the raft (every task replaced, one at a time, the
#      old one stopped first) while a client writes every 200 ms: the longest stretch without
#      a successful write is measured; the raft ends with exactly three members, the same ones
#   4. one task's container killed: Swarm replaces it and the raft has three healthy members
#      again (timed)
#   5. `docker service scale` to 5 (two more tasks, as agents) and back to 3: etcd lists three
#      members and the registry three live members
#   6. the registry's task killed: Swarm starts a new one at a new address, and every member
#      heartbeats to it within one interval of its start (timed), and stays listed past a TTL
#   7. `bash start.sh down --swarm` removes the stack, its volumes and the swarm start.sh made
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_dir"

slack="${ROLLCALL_E2E_SLACK:-2}"
e2e_tag=swarm e2e_script=tests/e2e/swarm.sh
# shellcheck source=tests/e2e/common.sh
source "$repo_dir/tests/e2e/common.sh"

require_docker
command -v python3 >/dev/null || fail "python3 is needed to read the registry's JSON"

# --- Own stack, subnet, port and (unless shared) images ------------------------------------

export ROLLCALL_STACK="rollcall-e2e-swarm-$$"
export COMPOSE_PROJECT_NAME="$ROLLCALL_STACK"
export ROLLCALL_SWARM_SUBNET="10.79.$((RANDOM % 200)).0/24"
if [[ ${ROLLCALL_E2E_SHARED_IMAGES:-} != 1 ]]; then
    export ROLLCALL_IMAGE_PREFIX="rollcall-e2e-swarm"
    export ROLLCALL_IMAGE_TAG="$(date +%s)-$$"
fi
export ROLLCALL_ENGINE=etcd ROLLCALL_NODES=3 ROLLCALL_EXPECT=3 ROLLCALL_CLUSTER=default
export ROLLCALL_DEAD_MEMBER_AFTER=30s
dead_member_after_s=30
# A rolling update waits this long after each task is healthy before the next (the stack's
# defaults, 10 s and 30 s, are for production).
export ROLLCALL_SWARM_UPDATE_DELAY=1s ROLLCALL_SWARM_UPDATE_MONITOR=5s
unset ROLLCALL_TOKEN ROLLCALL_TTL ROLLCALL_INTERVAL

ROLLCALL_REGISTRY_PORT="$(free_port)" || fail "no free loopback port found for the registry"
export ROLLCALL_REGISTRY_PORT
registry="http://127.0.0.1:$ROLLCALL_REGISTRY_PORT"
raft_service="${ROLLCALL_STACK}_raft"
registry_service="${ROLLCALL_STACK}_bootstrap"
results_file="$repo_dir/target/e2e-swarm-timings.txt"
swarm_before="$(docker info --format '{{.Swarm.LocalNodeState}}')"
writer=""

cleanup() {
    local code=$?
    if [[ $code != 0 ]]; then
        say "state at failure:"
        docker stack ps --no-trunc "$ROLLCALL_STACK" 2>/dev/null | head -n 30 || true
        docker service logs --tail 30 "$raft_service" 2>/dev/null | tail -n 60 || true
        docker service logs --tail 20 "$registry_service" 2>/dev/null | tail -n 20 || true
        local c
        for c in $(raft_containers); do
            say "the end of $(docker inspect -f '{{.Name}}' "$c")'s log:"
            docker logs --tail 12 "$c" 2>&1 | cut -c1-400 || true
        done
        if [[ ${ROLLCALL_E2E_KEEP:-} == 1 ]]; then
            say "ROLLCALL_E2E_KEEP=1: leaving stack $ROLLCALL_STACK running; remove it with:"
            say "  ROLLCALL_STACK=$ROLLCALL_STACK COMPOSE_PROJECT_NAME=$ROLLCALL_STACK bash start.sh down --swarm"
            exit "$code"
        fi
    fi
    [[ -z $writer ]] || docker rm -f -v "$writer" >/dev/null 2>&1 || true
    bash start.sh down --swarm >/dev/null 2>&1 || true
    # Whatever start.sh could not remove, by this run's names and labels.
    local ids
    ids="$(docker ps -aq --filter "label=com.docker.stack.namespace=$ROLLCALL_STACK")"
    [[ -z $ids ]] || docker rm -f -v $ids >/dev/null 2>&1 || true
    ids="$(docker volume ls -q --filter "name=^${ROLLCALL_STACK}_")"
    [[ -z $ids ]] || docker volume rm $ids >/dev/null 2>&1 || true
    if [[ $swarm_before == inactive && $(docker info --format '{{.Swarm.LocalNodeState}}') != inactive ]]; then
        docker swarm leave --force >/dev/null 2>&1 || true
        docker network rm docker_gwbridge >/dev/null 2>&1 || true
    fi
    if [[ ${ROLLCALL_E2E_SHARED_IMAGES:-} != 1 ]]; then
        ids="$(docker images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$ROLLCALL_IMAGE_PREFIX/*:$ROLLCALL_IMAGE_TAG")"
        [[ -z $ids ]] || docker rmi $ids >/dev/null 2>&1 || true
    fi
    [[ $code != 0 ]] || rm -rf "${TMPDIR:-/tmp}/rollcall-start.$COMPOSE_PROJECT_NAME"
    say "cleaned up stack $ROLLCALL_STACK (swarm before: $swarm_before, now: $(docker info --format '{{.Swarm.LocalNodeState}}'))"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Reading the registry and etcd ----------------------------------------------------------

# shellcheck source=tests/e2e/registry-view.sh
source "$repo_dir/tests/e2e/registry-view.sh"
record() { printf '%s\n' "$*" >>"$results_file"; }

# The running raft tasks' containers, by slot.
raft_containers() {
    docker ps --filter "label=com.docker.swarm.service.name=$raft_service" \
        --format '{{.Label "com.docker.swarm.task.name"}} {{.ID}}' | sort -t. -k2 -n | awk '{ print $2 }'
}
container_of_slot() {
    docker ps --filter "label=com.docker.swarm.service.name=$raft_service" \
        --format '{{.Label "com.docker.swarm.task.name"}} {{.ID}}' | awk -v s="$raft_service.$1." 'index($1, s) == 1 { print $2 }'
}
overlay_ip() {
    docker inspect -f "{{with index .NetworkSettings.Networks \"${ROLLCALL_STACK}_raft\"}}{{.IPAddress}}{{end}}" "$1"
}
etcdctl_in() { # container args...
    local c="$1"
    shift
    docker exec "$c" etcdctl --endpoints="http://$(overlay_ip "$c"):2379" --command-timeout=3s "$@"
}
# name <TAB> started, one etcd member a line, as a live task's etcd lists them.
etcd_members() {
    local c
    for c in $(raft_containers); do
        etcdctl_in "$c" member list 2>/dev/null | awk -F', ' '{ print $3 "\t" $2 }' && return 0
    done
    return 1
}
etcd_member_count() { etcd_members | grep -c . || true; }
three_etcd_members() {
    local list
    list="$(etcd_members)" || return 1
    [[ $(grep -c . <<<"$list") -eq 3 ]] && ! grep -q unstarted <<<"$list"
}
healthy_three() { healthy_raft 3 3 && three_etcd_members; }

: >"$results_file"

# --- 1. Deploy ------------------------------------------------------------------------------

say "1. bash start.sh --swarm (stack $ROLLCALL_STACK, overlay $ROLLCALL_SWARM_SUBNET, registry port $ROLLCALL_REGISTRY_PORT, swarm before: $swarm_before)"
deploy_log="$(mktemp)"
started=$SECONDS
bash start.sh --swarm --engine etcd --nodes 3 --no-browser --timeout 180 >"$deploy_log" 2>&1 ||
    { cat "$deploy_log"; fail "start.sh --swarm did not end with a healthy raft"; }
deployed_in=$((SECONDS - started))
healthy_line="$(grep -o 'healthy [0-9]*s after .docker stack deploy.' "$deploy_log" || true)"
rm -f "$deploy_log"
healthy_three || fail "after start.sh: not three healthy members with three etcd members"
pass "1. stack deployed, raft healthy (start.sh took ${deployed_in}s; ${healthy_line:-no timing line})"
record "swarm deploy: start.sh ${deployed_in}s; ${healthy_line}"

# --- 2. One raft -------------------------------------------------------------------------

mapfile -t tasks < <(raft_containers)
[[ ${#tasks[@]} -eq 3 ]] || fail "expected 3 raft containers, found ${#tasks[@]}"
etcdctl_in "${tasks[0]}" put swarm-e2e "written-through-task-1" >/dev/null || fail "write through task 1"
read_back="$(etcdctl_in "${tasks[1]}" get --print-value-only swarm-e2e)" || fail "read through task 2"
[[ $read_back == written-through-task-1 ]] || fail "task 2 read '$read_back'"
names_before="$(etcd_members | cut -f1 | sort | tr '\n' ' ')"
pass "2. a value written through task 1 is read through task 2; etcd members: $names_before"

# --- 3. Rolling update ---------------------------------------------------------------------

image="$(docker service inspect "$raft_service" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')"
writer="$(docker run -d --network "${ROLLCALL_STACK}_raft" --entrypoint sh "${image%@*}" -c '
    while true; do
        if etcdctl --endpoints=http://raft-1:2379,http://raft-2:2379,http://raft-3:2379 --dial-timeout=1s --command-timeout=1s put swarm-writer "$(date +%s%N)" >/dev/null 2>&1
        then echo "$(date +%s.%N) ok"; else echo "$(date +%s.%N) fail"; fi
        sleep 0.2
    done')"
wait_for 30 sh -c "docker logs $writer 2>/dev/null | grep -q ' ok'" >/dev/null || fail "the writer never wrote"
say "3. docker service update --force $raft_service (a writer on the overlay writes every 200 ms)"
started=$SECONDS
docker service update --force --detach=false "$raft_service" >/dev/null 2>&1 || fail "the rolling update failed"
updated_in=$((SECONDS - started))
sleep 2
writes="$(docker logs "$writer" 2>/dev/null)"
docker rm -f -v "$writer" >/dev/null
writer=""
# The longest time between two successful writes, and how many writes failed.
longest_gap="$(awk '$2 == "ok" { if (last != "" && $1 - last > max) max = $1 - last; last = $1 } END { printf "%.2f", max }' <<<"$writes")"
failed_writes="$(grep -c ' fail$' <<<"$writes" || true)"
ok_writes="$(grep -c ' ok$' <<<"$writes" || true)"
took="$(wait_for 120 healthy_three)" || fail "after the rolling update: not three healthy members with three etcd members ($(etcd_members | tr '\n' ' '))"
names_after="$(etcd_members | cut -f1 | sort | tr '\n' ' ')"
[[ $names_after == "$names_before" ]] || fail "etcd's members changed: $names_before -> $names_after"
awk -v g="$longest_gap" 'BEGIN { exit !(g < 30) }' || fail "the raft took no write for ${longest_gap}s during the update"
pass "3. rolling update of 3 tasks in ${updated_in}s: longest stretch without a write ${longest_gap}s ($failed_writes failed of $((ok_writes + failed_writes)) writes); healthy ${took}s later with the same members: $names_after"
record "swarm rolling update: ${updated_in}s for 3 tasks; longest write gap ${longest_gap}s; ${failed_writes} of $((ok_writes + failed_writes)) writes failed"

# --- 4. A killed task ---------------------------------------------------------------------

victim="$(container_of_slot 2)"
[[ -n $victim ]] || fail "no container for slot 2"
say "4. docker kill of slot 2's container ${victim:0:12}"
killed_at=$(date +%s.%N)
docker kill "$victim" >/dev/null
replaced() { local c; c="$(container_of_slot 2)"; [[ -n $c && $c != "$victim" ]]; }
wait_for 60 replaced >/dev/null || fail "Swarm did not replace the killed task"
# Whole again means the new task itself: the killed one's registration stays live for a TTL
# under the same name, and etcd lists the member as started while it is down.
replacement="$(container_of_slot 2)"
replacement_ip="$(overlay_ip "$replacement")"
replacement_listed() { members_tsv | awk -F'\t' -v a="$replacement_ip:2379" '$1 == "raft-2" && $2 == a && $4 == "true" { found = 1 } END { exit !found }'; }
whole_again() { replacement_listed && healthy_three; }
took="$(wait_for 120 whole_again)" || fail "after the kill: the replacement ($replacement_ip) is not listed in a healthy raft ($(members_tsv | cut -f1,2,4 | tr '\n' ' '); etcd: $(etcd_members | tr '\n' ' '))"
since_kill="$(awk -v s="$killed_at" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')"
pass "4. killed task replaced; the replacement ($replacement_ip) listed in the raft with three healthy members and three etcd members ${since_kill}s after the kill"
record "swarm killed task: the replacement listed in a whole raft ${since_kill}s after the kill"

# --- 5. Scale up and down --------------------------------------------------------------------

say "5. docker service scale $raft_service=5, then =3"
docker service scale --detach=false "$raft_service=5" >/dev/null 2>&1 || fail "scale to 5"
took="$(wait_for 120 healthy_raft 5 3)" || fail "at 5 tasks: the registry does not list 3 servers and 2 agents ($(members_tsv | cut -f1,3 | tr '\n' ' '))"
say "    5 tasks: 3 servers and 2 agents listed ${took}s after the scale"
docker service scale --detach=false "$raft_service=3" >/dev/null 2>&1 || fail "scale to 3"
took="$(wait_for $((dead_member_after_s + 90)) healthy_three)" ||
    fail "back at 3 tasks: not three healthy members with three etcd members ($(etcd_members | tr '\n' ' '); registry: $(members_tsv | cut -f1,3 | tr '\n' ' '))"
pass "5. scaled to 5 and back to 3: three healthy members, etcd lists three ${took}s after the scale-down"
record "swarm scale 5 -> 3: three healthy members ${took}s after the scale-down"

# --- 6. The registry's task restarted ----------------------------------------------------------

registry_container() { docker ps -q --filter "label=com.docker.swarm.service.name=$registry_service" | head -n 1; }
old_registry="$(registry_container)"
old_ip="$(overlay_ip "$old_registry")"
interval_s=5
say "6. docker kill of the registry's task ${old_registry:0:12} ($old_ip)"
docker kill "$old_registry" >/dev/null
new_registry_up() { local c; c="$(registry_container)"; [[ -n $c && $c != "$old_registry" ]] && curl -fsS --max-time 1 "$registry/health" >/dev/null 2>&1; }
wait_for 60 new_registry_up >/dev/null || fail "Swarm did not start a new registry task"
up_at=$(date +%s.%N)
new_ip="$(overlay_ip "$(registry_container)")"
# Every member heartbeated to the new task: its age is below the time since the task answered
# (a member loaded from the volume is as old as the task until its first heartbeat).
all_heartbeated() {
    curl -fsS --max-time 2 "$registry/v1/clusters/default/members" 2>/dev/null | python3 -c '
import json, sys, time
up = float(sys.argv[1])
members = json.load(sys.stdin)["members"]
since = time.time() - up
sys.exit(0 if len(members) == 3 and all(m["age_ms"] / 1000.0 < since - 0.5 for m in members) else 1)
' "$up_at"
}
took="$(wait_for $((interval_s + 30)) all_heartbeated)" || fail "not every member heartbeated to the new registry task"
awk -v t="$took" -v b="$((interval_s + slack))" 'BEGIN { exit !(t <= b) }' ||
    fail "members heartbeated to the new registry task ${took}s after it answered: more than one interval (${interval_s}s) + ${slack}s"
sleep $((15 + slack))
[[ $(member_count) -eq 3 ]] || fail "members expired after the registry's restart (the sidecars lost it)"
pass "6. registry task replaced ($old_ip -> $new_ip): every member heartbeated to it ${took}s after it answered, all listed a TTL later"
record "swarm registry restart: members heartbeated to the new task (${old_ip} -> ${new_ip}) ${took}s after it answered"

# --- 7. Down --------------------------------------------------------------------------------

say "7. bash start.sh down --swarm"
bash start.sh down --swarm >/dev/null 2>&1 || fail "start.sh down --swarm failed"
left="$(docker ps -aq --filter "label=com.docker.stack.namespace=$ROLLCALL_STACK")"
[[ -z $left ]] || fail "containers left: $left"
left="$(docker volume ls -q --filter "name=^${ROLLCALL_STACK}_")"
[[ -z $left ]] || fail "volumes left: $left"
if [[ $swarm_before == inactive ]]; then
    [[ $(docker info --format '{{.Swarm.LocalNodeState}}') == inactive ]] || fail "start.sh made the swarm but did not leave it"
fi
pass "7. stack, containers and volumes removed; swarm state $(docker info --format '{{.Swarm.LocalNodeState}}') (was $swarm_before)"
say "all swarm steps passed in ${SECONDS}s; timings in $results_file"
