#!/usr/bin/env bash
# End-to-end test of the Docker deployment: start.sh, the images and docker-compose.yml,
# with the real registry and sidecar binaries and a real etcd raft.
#
#   bash tests/e2e/docker.sh
#
# It runs under its own Compose project name, image prefix and registry port, so it never
# touches a running `bash start.sh`, and it removes every container, network, volume and
# image it created (by id) however it ends. Where no Docker engine answers it says that it
# was skipped and exits 0, except under CI=true, where Docker is required.
#
# What it checks, in order (the issue's acceptance list):
#   1. from nothing, `bash start.sh` ends with a healthy three-node raft (timed)
#   2. a value written through one node is read back through another, and the example
#      application of the README (docker/examples/app.yml) works
#   3. with the bootstrap container stopped, the raft keeps serving
#   4. the bootstrap recreated on an empty volume lists every member again within one
#      heartbeat interval (timed); nodes started after that join the same raft
#   5. scaling the raft from 3 to 5 adds two members to the same raft
#   6. a node cut off with `docker network disconnect` expires from /members within TTL+1s;
#      reconnected, it is listed again and the raft has all its members
#   7. a stopped node leaves /members within TTL+1s
#   8. `bash start.sh down` removes everything, and the next `bash start.sh` works (timed)
#   9. the bootstrap container paused (`docker pause`) for 2 x TTL while a new node starts:
#      once unpaused, the registry says it was frozen and the node joins the same raft
#  10. every raft container paused for 2 x TTL while a new node starts: no second raft (one
#      etcd cluster ID everywhere); unpaused, the raft is whole and listed again
#  11. `bash start.sh --nodes 5` over the running raft (three voters, two agents) resizes it:
#      the agents become voters, same generation, same etcd cluster, data kept
#  12. `bash start.sh --nodes 3` shrinks it: two nodes leave the raft (etcd lists three
#      members); one more killed, the raft keeps its quorum and serves writes
#  13. a raft container removed with its volume and replaced by a new one at another
#      address: the dead member is cleaned up, etcd lists exactly the three live members
#  14. `docker stop` of every raft container, then `docker start`: the same members
#  15. tests/e2e/swarm.sh with the same images: the same raft on a single-node swarm
#  16. tests/e2e/ha.sh with the same images: start.sh --ha, the active registry replica
#      stopped while a new node starts, and started again as a standby
#
# Settings: ROLLCALL_E2E_ENGINE (etcd), ROLLCALL_E2E_SLACK (seconds of scheduling slack
# allowed on top of the interval and TTL bounds, default 2), ROLLCALL_E2E_KEEP=1 to leave
# the project running after a failure for inspection.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_dir"

engine="${ROLLCALL_E2E_ENGINE:-etcd}"
slack="${ROLLCALL_E2E_SLACK:-2}"

e2e_tag=e2e e2e_script=tests/e2e/docker.sh
# shellcheck source=tests/e2e/common.sh
source "$repo_dir/tests/e2e/common.sh"

# --- Is there a Docker engine? ----------------------------------------------------------

require_docker
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    echo "tests/e2e/docker.sh: FAILED: Docker answers but neither 'docker compose' nor 'docker-compose' is installed" >&2
    exit 1
fi
command -v curl >/dev/null || { echo "tests/e2e/docker.sh: FAILED: curl is needed" >&2; exit 1; }

# --- Own project, images and port --------------------------------------------------------

run_id="$(date +%s)-$$"
export COMPOSE_PROJECT_NAME="rollcall-e2e-$$"
export ROLLCALL_IMAGE_PREFIX="rollcall-e2e"
export ROLLCALL_IMAGE_TAG="$run_id"
export ROLLCALL_ENGINE="$engine"
export ROLLCALL_NODES=3
export ROLLCALL_EXPECT=3
export ROLLCALL_CLUSTER=default
# The registry runs with its own defaults for the TTL and the interval; the bounds below
# are read from the binary once start.sh has built it.
# Dead members are cleaned up after 30 s here (the default is 5 minutes): long enough that
# step 6's node, cut off for about a TTL, is never removed.
export ROLLCALL_DEAD_MEMBER_AFTER=30s
dead_member_after_s=30
unset ROLLCALL_TOKEN ROLLCALL_COMPOSE ROLLCALL_TTL ROLLCALL_INTERVAL ROLLCALL_STARTUP_GRACE ROLLCALL_QUIET_PERIOD

ROLLCALL_REGISTRY_PORT="$(free_port)" || fail "no free loopback port found for the registry"
export ROLLCALL_REGISTRY_PORT
registry="http://127.0.0.1:$ROLLCALL_REGISTRY_PORT"
results_file="$repo_dir/target/e2e-docker-timings.txt"

compose() { "${compose_cmd[@]}" -f "$repo_dir/docker-compose.yml" -p "$COMPOSE_PROJECT_NAME" "$@"; }
project_filter=(--filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")

# Removes what this run created, by id: containers, then networks and volumes, then images.
cleanup() {
    local code=$?
    if [[ ${failed:-0} == 1 || $code != 0 ]]; then
        say "state at failure:"
        curl -fsS --max-time 3 "$registry/v1/clusters/default/members" 2>/dev/null | head -c 4000 || true
        echo
        compose ps 2>/dev/null || true
        compose logs --tail=40 2>/dev/null | tail -n 120 || true
        if [[ ${ROLLCALL_E2E_KEEP:-} == 1 ]]; then
            say "ROLLCALL_E2E_KEEP=1: leaving project $COMPOSE_PROJECT_NAME running; remove it with:"
            say "  COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME bash start.sh down"
            exit "$code"
        fi
    fi
    local ids
    ids="$(docker ps -aq "${project_filter[@]}")"
    [[ -z $ids ]] || docker rm -f -v $ids >/dev/null 2>&1 || true
    ids="$(docker network ls -q "${project_filter[@]}")"
    [[ -z $ids ]] || docker network rm $ids >/dev/null 2>&1 || true
    ids="$(docker volume ls -q "${project_filter[@]}")"
    [[ -z $ids ]] || docker volume rm $ids >/dev/null 2>&1 || true
    # Images by tag, never by id: a cached build shares its id with the developer's own
    # rollcall/* images, which must stay.
    ids="$(docker images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$ROLLCALL_IMAGE_PREFIX/*:$ROLLCALL_IMAGE_TAG")"
    [[ -z $ids ]] || docker rmi $ids >/dev/null 2>&1 || true
    # start.sh's logs for this project; kept after a failure, where they tell what went wrong.
    [[ $code != 0 ]] || rm -rf "${TMPDIR:-/tmp}/rollcall-start.$COMPOSE_PROJECT_NAME"
    say "cleaned up project $COMPOSE_PROJECT_NAME and its images"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Reading the registry ------------------------------------------------------------------

# shellcheck source=tests/e2e/registry-view.sh
source "$repo_dir/tests/e2e/registry-view.sh"

# --- Talking to etcd ----------------------------------------------------------------------

raft_ids() { compose ps -q raft; }
short() { printf '%s' "${1:0:12}"; }
container_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{ print $1 }'; }

# etcdctl inside a node, against that node's own client address.
etcdctl_on() {
    local id="$1"
    shift
    docker exec "$id" etcdctl --endpoints="http://$(container_ip "$id"):2379" --command-timeout=5s "$@"
}
put_via() { etcdctl_on "$1" put "$2" "$3" >/dev/null; }
get_via() { etcdctl_on "$1" get "$2" --print-value-only; }
etcd_member_count() { etcdctl_on "$1" member list | grep -c started || true; }
etcd_members_total() { etcdctl_on "$1" member list | grep -c . || true; }
# Exactly three members, all started, one of them the replacement (its name is its short id).
raft_replaced() {
    local list
    list="$(etcdctl_on "$1" member list 2>/dev/null)" || return 1
    [[ $(grep -c . <<<"$list") -eq 3 && $(grep -c started <<<"$list") -eq 3 ]] && grep -q "$(short "$1")" <<<"$list"
}
# The etcd cluster ID a node serves (etcdctl's line-per-field output, not JSON).
cluster_id_of() { etcdctl_on "$1" endpoint status -w fields | awk -F' : ' '/"ClusterID"/ { print $2; exit }'; }
registry_generation() { docker exec "$(compose ps -q bootstrap)" rollcall-registry generation default; }

record() { printf '%s\t%s\n' "$1" "$2" >>"$results_file.tmp"; }

# ========================================================================================
mkdir -p "$(dirname "$results_file")"
: >"$results_file.tmp"
say "project $COMPOSE_PROJECT_NAME, engine $engine, registry on $registry, compose: ${compose_cmd[*]}"
[[ -z $(docker ps -aq "${project_filter[@]}") ]] || fail "project $COMPOSE_PROJECT_NAME already has containers"

# 1. From nothing to a healthy three-node raft. -------------------------------------------
say "1. bash start.sh (from nothing: no containers, no images of this run)"
started=$SECONDS
bash start.sh --engine "$engine" --no-browser --timeout 240 >"$repo_dir/target/e2e-start-1.log" 2>&1 ||
    { tail -n 40 "$repo_dir/target/e2e-start-1.log"; fail "start.sh did not bring up a healthy raft"; }
first_start=$((SECONDS - started))
healthy_raft 3 3 || fail "start.sh returned but the registry does not list 3 servers with one leader"
pass "start.sh from nothing to a healthy 3-node raft in ${first_start}s"
record "start.sh from nothing (images of this run absent, base image and cargo cache present)" "${first_start}s"
grep -E 'done in|healthy after' "$repo_dir/target/e2e-start-1.log" | sed 's/^ */    /' || true

# The heartbeat interval and the TTL the registry runs with: its defaults, as the binary
# start.sh built says.
registry_default() { env -i "$repo_dir/docker/bin/rollcall-registry" defaults "$1"; }
interval="$(registry_default ROLLCALL_INTERVAL)" || fail "rollcall-registry defaults ROLLCALL_INTERVAL failed"
ttl="$(registry_default ROLLCALL_TTL)" || fail "rollcall-registry defaults ROLLCALL_TTL failed"
[[ $interval =~ ^[0-9]+s$ && $ttl =~ ^[0-9]+s$ ]] ||
    fail "the registry's defaults (interval $interval, TTL $ttl) are not whole seconds, as this test expects"
interval_s="${interval%s}" ttl_s="${ttl%s}"
say "    the registry's heartbeat interval is ${interval_s}s and its TTL ${ttl_s}s"

mapfile -t nodes < <(raft_ids)
[[ ${#nodes[@]} -eq 3 ]] || fail "expected 3 raft containers, found ${#nodes[@]}"
for id in "${nodes[@]}"; do
    is_listed "$(short "$id")" || fail "node $(short "$id") is not listed by the registry"
done

# 2. Write through one node, read through another. ----------------------------------------
say "2. write through one node, read through another"
put_via "${nodes[0]}" rollcall/e2e/hello "world-$run_id" || fail "write through node $(short "${nodes[0]}") failed"
value="$(get_via "${nodes[1]}" rollcall/e2e/hello)" || fail "read through node $(short "${nodes[1]}") failed"
[[ $value == "world-$run_id" ]] || fail "read '$value' through $(short "${nodes[1]}"), expected 'world-$run_id'"
pass "value written via $(short "${nodes[0]}") read back via $(short "${nodes[1]}")"

# The README's "use it in your own composition" example: an app that finds the raft
# through the registry.
say "2b. the example application (docker/examples/app.yml) finds the raft through the registry"
app_output="$("${compose_cmd[@]}" -f "$repo_dir/docker-compose.yml" -f "$repo_dir/docker/examples/app.yml" \
    -p "$COMPOSE_PROJECT_NAME" run --rm app 2>&1)" || { printf '%s\n' "$app_output"; fail "the example application failed"; }
grep -q '^hello from ' <<<"$app_output" || { printf '%s\n' "$app_output"; fail "the example application did not read its value back"; }
pass "docker/examples/app.yml: $(grep -m1 'etcd servers' <<<"$app_output")"

# 3. Bootstrap stopped: the raft keeps serving. ---------------------------------------------
say "3. stop the bootstrap container; the raft must keep serving"
compose stop bootstrap >/dev/null 2>&1
registry_answers && fail "the registry still answers after 'compose stop bootstrap'"
for round in 1 2; do
    put_via "${nodes[1]}" rollcall/e2e/without-registry "round-$round" || fail "write without the registry failed (round $round)"
    value="$(get_via "${nodes[2]}" rollcall/e2e/without-registry)" || fail "read without the registry failed (round $round)"
    [[ $value == "round-$round" ]] || fail "read '$value' without the registry, expected 'round-$round'"
    # The second round comes after two missed heartbeats, when a sidecar that wrongly ties
    # its agent to the registry would have stopped it.
    [[ $round == 2 ]] || sleep $((2 * interval_s))
done
for id in "${nodes[@]}"; do
    [[ $(docker inspect -f '{{.State.Running}}' "$id") == true ]] || fail "node $(short "$id") stopped while the registry was away"
done
pass "writes and reads work with the registry stopped (checked at once and after $((2 * interval_s))s)"

# 4. Bootstrap recreated on an empty volume. ----------------------------------------------
say "4. recreate the bootstrap with an empty volume"
compose rm -f -s -v bootstrap >/dev/null 2>&1
volume_ids="$(docker volume ls -q "${project_filter[@]}" --filter label=com.docker.compose.volume=registry-data)"
[[ -n $volume_ids ]] || fail "the registry's named volume was not found"
docker volume rm $volume_ids >/dev/null
compose up -d --no-deps bootstrap >/dev/null 2>&1
wait_for 30 registry_answers >/dev/null || fail "the recreated registry does not answer"
[[ $(member_count) -lt 3 ]] || say "    (all members were back before the first poll)"
names=()
for id in "${nodes[@]}"; do names+=("$(short "$id")"); done
reregistered="$(wait_for $((interval_s + slack)) all_listed "${names[@]}")" ||
    fail "not every member re-registered within one interval (${interval_s}s + ${slack}s slack): $(member_count) listed"
pass "all 3 members registered again ${reregistered}s after the new registry answered (bound: ${interval_s}s + ${slack}s)"
record "re-registration after the bootstrap was recreated on an empty volume" "${reregistered}s"
wait_for 20 healthy_raft 3 3 >/dev/null || fail "the registry does not see one leader among the 3 servers again"

# 5. Scale 3 -> 5: the two new nodes join the same raft. -----------------------------------
say "5. scale the raft from 3 to 5 (nodes started after the registry was recreated)"
scale_started=$SECONDS
compose up -d --no-deps --no-recreate --scale raft=5 raft >/dev/null 2>&1 || fail "compose could not scale raft to 5"
mapfile -t all_nodes < <(raft_ids)
[[ ${#all_nodes[@]} -eq 5 ]] || fail "expected 5 raft containers after scaling, found ${#all_nodes[@]}"
new_nodes=()
for id in "${all_nodes[@]}"; do
    [[ " ${nodes[*]} " == *" $id "* ]] || new_nodes+=("$id")
done
[[ ${#new_nodes[@]} -eq 2 ]] || fail "expected 2 new containers, found ${#new_nodes[@]}"
wait_for 120 all_listed "$(short "${new_nodes[0]}")" "$(short "${new_nodes[1]}")" >/dev/null ||
    fail "the two new nodes are not listed within 120s"
wait_for 30 healthy_raft 5 3 >/dev/null || fail "expected 5 members, 3 servers and one leader; have $(member_count) members, $(server_count) servers"
for id in "${new_nodes[@]}"; do
    value="$(get_via "$id" rollcall/e2e/hello)" || fail "read through new node $(short "$id") failed"
    [[ $value == "world-$run_id" ]] || fail "new node $(short "$id") reads '$value': not the same raft"
done
put_via "${new_nodes[0]}" rollcall/e2e/from-new-node yes || fail "write through new node failed"
[[ $(get_via "${nodes[0]}" rollcall/e2e/from-new-node) == yes ]] || fail "a write through a new node is not seen by the first node"
[[ $(etcd_member_count "${nodes[0]}") -eq 3 ]] || fail "etcd lists $(etcd_member_count "${nodes[0]}") voting members, expected 3"
pass "scaled to 5 in $((SECONDS - scale_started))s: 5 members (3 servers, 2 agents), one raft, data shared both ways"
record "scale 3 -> 5, until both new nodes are listed and serve the raft's data" "$((SECONDS - scale_started))s"

# 6. Network cut: expiry, then back. -------------------------------------------------------
say "6. cut a follower off with 'docker network disconnect', then reconnect it"
leader_node="$(members_tsv | awk -F'\t' '$5 == "true" { print $1 }')"
victim=""
for id in "${nodes[@]}"; do
    [[ $(short "$id") == "$leader_node" ]] || { victim="$id"; break; }
done
[[ -n $victim ]] || fail "no follower to cut off"
network="$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$victim")"
ip_before="$(container_ip "$victim")"
docker network disconnect "$network" "$victim"
expired="$(wait_for $((ttl_s + 1 + slack)) not_listed "$(short "$victim")")" ||
    fail "node $(short "$victim") cut off from the network is still listed after $((ttl_s + 1 + slack))s"
pass "cut-off node $(short "$victim") expired from /members after ${expired}s (bound: TTL ${ttl_s}s + 1s + ${slack}s)"
record "expiry of a node cut off with docker network disconnect" "${expired}s"
docker network connect --alias raft "$network" "$victim"
ip_after="$(container_ip "$victim")"
[[ $ip_before == "$ip_after" ]] || say "    note: the node came back with another address ($ip_before -> $ip_after)"
relisted="$(wait_for 60 is_listed "$(short "$victim")")" || fail "reconnected node $(short "$victim") is not listed again within 60s"
wait_for 30 healthy_raft 5 3 >/dev/null || fail "after the reconnect the registry does not see 5 members, 3 servers, one leader"
[[ $(etcd_member_count "$victim") -eq 3 ]] || fail "the reconnected node sees $(etcd_member_count "$victim") members, expected 3"
put_via "$victim" rollcall/e2e/after-reconnect yes || fail "write through the reconnected node failed"
pass "reconnected node listed again after ${relisted}s; the raft has all 3 voting members and serves it"

# 7. A stopped node leaves /members within TTL + 1s. ----------------------------------------
say "7. stop one node"
stopped="${new_nodes[1]}"
docker stop -t 20 "$stopped" >/dev/null &
gone="$(wait_for $((ttl_s + 1 + slack)) not_listed "$(short "$stopped")")" ||
    fail "stopped node $(short "$stopped") is still listed after $((ttl_s + 1 + slack))s"
wait
pass "stopped node $(short "$stopped") left /members ${gone}s after 'docker stop' (bound: TTL ${ttl_s}s + 1s)"
record "a stopped node leaves /members" "${gone}s"

# 8. start.sh down, and up again from built images. -----------------------------------------
say "8. bash start.sh down, then bash start.sh again"
bash start.sh down >"$repo_dir/target/e2e-down.log" 2>&1 || { cat "$repo_dir/target/e2e-down.log"; fail "start.sh down failed"; }
[[ -z $(docker ps -aq "${project_filter[@]}") ]] || fail "containers remain after start.sh down"
[[ -z $(docker volume ls -q "${project_filter[@]}") ]] || fail "volumes remain after start.sh down"
[[ -z $(docker network ls -q "${project_filter[@]}") ]] || fail "networks remain after start.sh down"
pass "start.sh down removed containers, volumes and network"
# The binaries were built by the first start.sh: this one starts from built images only.
export ROLLCALL_SKIP_CARGO=1
started=$SECONDS
bash start.sh --engine "$engine" --no-browser --timeout 240 >"$repo_dir/target/e2e-start-2.log" 2>&1 ||
    { tail -n 40 "$repo_dir/target/e2e-start-2.log"; fail "the second start.sh did not bring up a healthy raft"; }
second_start=$((SECONDS - started))
healthy_raft 3 3 || fail "after the second start.sh the registry does not list 3 servers with one leader"
mapfile -t nodes < <(raft_ids)
put_via "${nodes[0]}" rollcall/e2e/second-life yes && [[ $(get_via "${nodes[2]}" rollcall/e2e/second-life) == yes ]] ||
    fail "the second raft does not serve writes and reads"
pass "start.sh from built images to a healthy 3-node raft in ${second_start}s"
record "start.sh from built images (after start.sh down)" "${second_start}s"

# Running start.sh again on a healthy raft changes nothing.
ids_before="$(raft_ids | sort)"
bash start.sh --engine "$engine" --no-browser --timeout 60 >"$repo_dir/target/e2e-start-3.log" 2>&1 ||
    fail "start.sh on a running raft failed"
[[ $(raft_ids | sort) == "$ids_before" ]] || fail "running start.sh twice replaced the raft's containers"
pass "running start.sh again is harmless (same containers, still healthy)"

# 9. The registry frozen (docker pause) for 2 x TTL while a node starts. ----------------------
say "9. pause the bootstrap container for $((2 * ttl_s))s while a fourth node starts"
mapfile -t nodes < <(raft_ids)
first_cluster_id="$(cluster_id_of "${nodes[0]}")" || fail "cannot read the raft's etcd cluster ID"
bootstrap_id="$(compose ps -q bootstrap)"
docker pause "$bootstrap_id" >/dev/null
compose up -d --no-deps --no-recreate --scale raft=4 raft >/dev/null 2>&1 || fail "compose could not scale raft to 4"
sleep $((2 * ttl_s))
docker unpause "$bootstrap_id" >/dev/null
mapfile -t now_nodes < <(raft_ids)
newcomer=""
for id in "${now_nodes[@]}"; do [[ " ${nodes[*]} " == *" $id "* ]] || newcomer="$id"; done
[[ -n $newcomer ]] || fail "no fourth raft container"
joined="$(wait_for 90 all_listed "$(short "$newcomer")")" || fail "the node started during the freeze is not listed within 90s"
wait_for 30 healthy_raft 4 3 >/dev/null || fail "after the freeze: expected 4 members, 3 servers, one leader"
[[ $(cluster_id_of "$newcomer") == "$first_cluster_id" ]] || fail "the node started during the freeze serves another etcd cluster"
[[ $(get_via "$newcomer" rollcall/e2e/second-life) == yes ]] || fail "the node started during the freeze does not read the raft's data"
# Read whole, then searched: under pipefail, `grep -q` closing the pipe early fails the pipe.
registry_log="$(compose logs --no-color bootstrap 2>&1)"
grep -q "did not run for" <<<"$registry_log" || fail "the registry did not log that it was frozen"
pass "registry paused $((2 * ttl_s))s: it said it was frozen, and the new node joined the same raft ${joined}s after the unpause"
record "a node started while the registry was paused for 2 x TTL: listed after the unpause" "${joined}s"

# 10. The whole raft paused for 2 x TTL while a node starts. --------------------------------
say "10. pause every raft container for $((2 * ttl_s))s while a fifth node starts"
mapfile -t paused < <(raft_ids)
docker pause "${paused[@]}" >/dev/null
# The new node starts once the registry has expired the paused members, as a node started
# long after a raft went quiet would.
wait_for $((ttl_s + 1 + slack)) no_members >/dev/null ||
    fail "the paused raft's members did not expire within TTL + 1s"
compose up -d --no-deps --no-recreate --scale raft=5 raft >/dev/null 2>&1 || fail "compose could not scale raft to 5"
sleep "$ttl_s"
mapfile -t now_nodes < <(raft_ids)
waiting=""
for id in "${now_nodes[@]}"; do [[ " ${paused[*]} " == *" $id "* ]] || waiting="$id"; done
[[ -n $waiting ]] || fail "no fifth raft container"
waiting_log="$(docker logs "$waiting" 2>&1)"
grep -q "reset_required\|already has a raft" <<<"$waiting_log" ||
    fail "the node that started beside the paused raft does not say why it waits"
docker unpause "${paused[@]}" >/dev/null
names=()
for id in "${paused[@]}"; do names+=("$(short "$id")"); done
back="$(wait_for 60 all_listed "${names[@]}")" || fail "the unpaused raft is not listed again within 60s"
joined="$(wait_for 120 is_listed "$(short "$waiting")")" || fail "the waiting node did not join the raft within 120s of the unpause"
for id in "${now_nodes[@]}"; do
    [[ $(cluster_id_of "$id") == "$first_cluster_id" ]] || fail "node $(short "$id") serves another etcd cluster: a second raft"
done
[[ $(etcd_member_count "${paused[0]}") -eq 3 ]] || fail "etcd lists $(etcd_member_count "${paused[0]}") voting members, expected 3"
pass "raft paused $((2 * ttl_s))s: the new node waited and said why, no second raft (one cluster ID on all 5), the raft listed again ${back}s after the unpause"
record "the raft listed again after every raft container was paused for 2 x TTL" "${back}s"

# 11. start.sh --nodes 5 resizes the running raft: the agents become voters. ---------------
say "11. bash start.sh --nodes 5 over the running raft (3 voters, 2 agents): resized, same raft"
generation_before="$(registry_generation)" || fail "cannot read the cluster's generation"
started=$SECONDS
# Without this run's ROLLCALL_EXPECT=3: start.sh sizes the raft from --nodes, as a user's would.
env -u ROLLCALL_EXPECT bash start.sh --engine "$engine" --nodes 5 --no-browser --timeout 240 >"$repo_dir/target/e2e-start-4.log" 2>&1 ||
    { tail -n 40 "$repo_dir/target/e2e-start-4.log"; fail "start.sh --nodes 5 did not bring up a healthy five-voter raft"; }
grep -q "resizing the running raft" "$repo_dir/target/e2e-start-4.log" || fail "start.sh --nodes 5 did not say that it resized the raft"
healthy_raft 5 5 || fail "after start.sh --nodes 5 the registry does not list 5 servers with one leader"
[[ $(registry_generation) == "$generation_before" ]] || fail "start.sh --nodes 5 changed the generation: the raft was replaced, not resized"
mapfile -t nodes < <(raft_ids)
[[ ${#nodes[@]} -eq 5 ]] || fail "expected 5 raft containers, found ${#nodes[@]}"
[[ $(etcd_member_count "${nodes[0]}") -eq 5 ]] || fail "etcd lists $(etcd_member_count "${nodes[0]}") started members, expected 5"
for id in "${nodes[@]}"; do
    [[ $(cluster_id_of "$id") == "$first_cluster_id" ]] || fail "node $(short "$id") serves another etcd cluster after the resize"
    [[ $(get_via "$id" rollcall/e2e/second-life) == yes ]] || fail "node $(short "$id") lost the raft's data in the resize"
done
pass "start.sh --nodes 5 resized the raft to 5 voters in $((SECONDS - started))s: same generation, same etcd cluster, data kept"
record "start.sh --nodes 5 over 3 voters and 2 agents (resize; the agents become voters)" "$((SECONDS - started))s"

# 12. start.sh --nodes 3 shrinks it: two nodes leave the raft for good. --------------------
say "12. bash start.sh --nodes 3: two nodes leave the raft, then one more is killed"
started=$SECONDS
env -u ROLLCALL_EXPECT bash start.sh --engine "$engine" --nodes 3 --no-browser --timeout 240 >"$repo_dir/target/e2e-start-5.log" 2>&1 ||
    { tail -n 40 "$repo_dir/target/e2e-start-5.log"; fail "start.sh --nodes 3 did not bring up a healthy three-voter raft"; }
healthy_raft 3 3 || fail "after start.sh --nodes 3 the registry does not list 3 servers with one leader"
mapfile -t nodes < <(raft_ids)
[[ ${#nodes[@]} -eq 3 ]] || fail "expected 3 raft containers after the shrink, found ${#nodes[@]}"
[[ $(etcd_members_total "${nodes[0]}") -eq 3 ]] || fail "etcd lists $(etcd_members_total "${nodes[0]}") members after the shrink, expected 3"
pass "start.sh --nodes 3 shrank the raft to 3 members in $((SECONDS - started))s (the two that left are gone from etcd's member list)"
record "start.sh --nodes 3 over 5 voters (resize, two nodes leave the raft)" "$((SECONDS - started))s"
leader_node="$(members_tsv | awk -F'\t' '$5 == "true" { print $1 }')"
killed=""
for id in "${nodes[@]}"; do [[ $(short "$id") == "$leader_node" ]] || { killed="$id"; break; }; done
docker kill "$killed" >/dev/null
survivor=""
for id in "${nodes[@]}"; do [[ $id == "$killed" ]] || survivor="$id"; done
put_via "$survivor" rollcall/e2e/after-shrink yes || fail "with one of three killed after the shrink, the raft does not take writes"
[[ $(get_via "$survivor" rollcall/e2e/after-shrink) == yes ]] || fail "with one of three killed after the shrink, a write is not read back"
pass "one more member killed after the shrink: the raft keeps its quorum (2 of 3) and serves writes"
docker start "$killed" >/dev/null
wait_for 90 healthy_raft 3 3 >/dev/null || fail "the killed node did not come back into the raft within 90s"

# 13. A node replaced by a new container, with a new volume, at another address. -----------
say "13. remove a raft container with its volume, start a new one at another address"
leader_node="$(members_tsv | awk -F'\t' '$5 == "true" { print $1 }')"
victim=""
for id in "${nodes[@]}"; do [[ $(short "$id") == "$leader_node" ]] || { victim="$id"; break; }; done
ip_before="$(container_ip "$victim")"
network="$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$victim")"
started=$SECONDS
docker rm -f -v "$victim" >/dev/null
# Docker hands out the lowest free address, which is the removed node's: a placeholder on the
# project network takes it first, so that the replacement comes up at another address, as
# it may on any host (the placeholder carries the project's label: the cleanup removes it).
placeholder="$(docker run -d --network "$network" --label "com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --entrypoint sleep "$ROLLCALL_IMAGE_PREFIX/registry:$ROLLCALL_IMAGE_TAG" 600)" || fail "cannot start the address placeholder"
compose up -d --no-deps --no-recreate --scale raft=3 raft >/dev/null 2>&1 || fail "compose could not start a replacement"
mapfile -t now_nodes < <(raft_ids)
replacement=""
for id in "${now_nodes[@]}"; do [[ " ${nodes[*]} " == *" $id "* ]] || replacement="$id"; done
[[ -n $replacement ]] || fail "no replacement container"
has_ip() { [[ -n $(container_ip "$1") ]]; }
wait_for 30 has_ip "$replacement" >/dev/null ||
    fail "the replacement $(short "$replacement") has no address after 30s: $(docker inspect -f '{{.State.Status}} {{json .NetworkSettings.Networks}}' "$replacement")"
ip_after="$(container_ip "$replacement")"
[[ $ip_after != "$ip_before" ]] || fail "the replacement has the address $ip_after, the same as the removed node's: this step needs another one"
replaced_in="$(wait_for $((dead_member_after_s + 120)) raft_replaced "$replacement")" ||
    fail "etcd did not return to three started members with the replacement within $((dead_member_after_s + 120))s: $(etcdctl_on "${nodes[0]}" member list 2>&1 | tr '\n' ';')"
wait_for 30 healthy_raft 3 3 >/dev/null || fail "after the replacement the registry does not list 3 servers with one leader"
[[ $(get_via "$replacement" rollcall/e2e/second-life) == yes ]] || fail "the replacement does not read the raft's data"
docker rm -f -v "$placeholder" >/dev/null
pass "replacement at $ip_after (was $ip_before): etcd lists exactly the 3 live members ${replaced_in}s after the new container started (cleanup threshold ${dead_member_after_s}s)"
record "a node removed with its volume, replaced at another address: 3 live members in etcd again" "$((SECONDS - started))s"

# 14. docker stop of every raft container, then docker start: every member stays. ----------
say "14. docker stop every raft container, then docker start them"
mapfile -t nodes < <(raft_ids)
ids_before="$(etcdctl_on "${nodes[0]}" member list | cut -d, -f1 | sort | tr '\n' ' ')"
docker stop -t 20 "${nodes[@]}" >/dev/null
docker start "${nodes[@]}" >/dev/null
restarted="$(wait_for 120 healthy_raft 3 3)" || fail "the raft is not healthy within 120s of docker start"
ids_after="$(etcdctl_on "${nodes[0]}" member list | cut -d, -f1 | sort | tr '\n' ' ')"
[[ $ids_after == "$ids_before" ]] || fail "etcd's members changed across docker stop/start: $ids_before -> $ids_after"
[[ $(get_via "${nodes[1]}" rollcall/e2e/second-life) == yes ]] || fail "the raft lost its data across docker stop/start"
pass "stopped and started every raft container: the same 3 members, healthy ${restarted}s after docker start"
record "docker stop of every raft container, then docker start: healthy again" "${restarted}s"

{
    printf '# tests/e2e/docker.sh, %s, %s, engine %s, %s CPUs\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "${compose_cmd[*]}" "$engine" "$(nproc)"
    cat "$results_file.tmp"
} >"$results_file"
rm -f "$results_file.tmp"
say "all passed; timings:"
column -t -s $'\t' "$results_file" 2>/dev/null || cat "$results_file"

# The Swarm deployment, with these images (one build for both); it removes what it made.
say "the Compose project stops; tests/e2e/swarm.sh runs with the same images"
compose down -v --timeout 20 >/dev/null 2>&1 || true
ROLLCALL_E2E_SHARED_IMAGES=1 ROLLCALL_SKIP_CARGO=1 bash tests/e2e/swarm.sh || fail "tests/e2e/swarm.sh failed"

# The registry as replicas on etcd (start.sh --ha), with these images too.
say "tests/e2e/ha.sh runs with the same images"
ROLLCALL_E2E_SHARED_IMAGES=1 ROLLCALL_SKIP_CARGO=1 bash tests/e2e/ha.sh || fail "tests/e2e/ha.sh failed"
