#!/usr/bin/env bash
# Starts rollcall's bootstrap registry and a raft (Consul or etcd) whose nodes find each
# other only through it, waits until the raft is healthy as the registry sees it, and
# prints the state and the links.
#
#   bash start.sh                      Consul if its image can be had, etcd otherwise
#   bash start.sh --engine etcd        an etcd raft
#   bash start.sh --nodes 5            five raft nodes (a five-server raft); over a running
#                                      raft of the same engine it resizes that raft
#   bash start.sh status               the registry's view of the running raft
#   bash start.sh down                 stop and remove containers, network and volumes
#   bash start.sh --swarm              the same on Docker Swarm (docker-stack.yml): makes a
#                                      single-node swarm when the engine is in none
#   bash start.sh down --swarm         remove the stack and its volumes; leave the swarm if
#                                      start.sh made it
#
# Running it twice is harmless: what is built stays built, what runs keeps running.
# It works with `docker compose` (v2) and with `docker-compose` 1.29.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo_dir"

readonly consul_image="${ROLLCALL_CONSUL_IMAGE:-hashicorp/consul:1.20}"
readonly base_image="debian:bookworm-slim"
readonly rust_target="x86_64-unknown-linux-gnu"
readonly binaries=(rollcall-registry rollcall-sidecar)

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-rollcall}"
export ROLLCALL_CLUSTER="${ROLLCALL_CLUSTER:-default}"
export ROLLCALL_REGISTRY_PORT="${ROLLCALL_REGISTRY_PORT:-7400}"

usage() {
    cat <<'USAGE'
usage: bash start.sh [up] [--swarm | --ha] [--engine consul|etcd] [--nodes N] [--timeout SECONDS] [--no-browser]
       bash start.sh status [--swarm]
       bash start.sh down [--swarm]

  up (default)   build what is missing, start the registry and N raft nodes, wait until the
                 raft is healthy (N live members, one leader) and print links
  status         print the registry's view of the running raft
  down           remove the containers, the network and the volumes (the raft's data)

  --engine       consul (default when hashicorp/consul can be pulled) or etcd
  --nodes N      raft nodes to run (default 3); as many as a claim may ask for become
                 servers (MAX_EXPECT of `rollcall-registry defaults`), the rest agents.
                 Over a running raft of the same engine: resizes it (`rollcall-registry
                 resize`; the nodes removed by a shrink `rollcall-sidecar leave` first)
  --timeout S    how long to wait for a healthy raft (default 180)
  --swarm        deploy docker-stack.yml with `docker stack deploy` instead of Compose (a
                 single-node swarm is made when the engine is in none, and left by
                 `down --swarm`); ROLLCALL_STACK (rollcall) names the stack,
                 ROLLCALL_SWARM_SUBNET (10.77.0.0/24) its overlay network
  --ha           the registry as two replicas (ports ROLLCALL_REGISTRY_PORT and
                 ROLLCALL_REGISTRY_PORT_2, 7400 and 7401) on a three-member etcd of its own
                 (docker-compose.ha.yml); the raft is given both replicas
  --no-browser   do not open a browser

Environment: ROLLCALL_SKIP_CARGO=1 (use the static binaries already in docker/bin), ROLLCALL_ENGINE, ROLLCALL_NODES, ROLLCALL_EXPECT, ROLLCALL_REGISTRY_PORT (7400),
ROLLCALL_BIND (127.0.0.1), ROLLCALL_CLUSTER (default), ROLLCALL_TTL, ROLLCALL_INTERVAL,
ROLLCALL_TOKEN, COMPOSE_PROJECT_NAME (rollcall); see the README.
USAGE
}

# ---------------------------------------------------------------------------------------
# Output

if [[ -t 1 ]]; then
    bold=$'\e[1m' dim=$'\e[2m' green=$'\e[32m' red=$'\e[31m' reset=$'\e[0m'
else
    bold="" dim="" green="" red="" reset=""
fi
step() { printf '%s==>%s %s\n' "$bold" "$reset" "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf '%serror:%s %s\n' "$red" "$reset" "$*" >&2; exit 1; }

log_dir="${TMPDIR:-/tmp}/rollcall-start.$COMPOSE_PROJECT_NAME"
mkdir -p "$log_dir"

# Runs a command with its output in a log file, showing the elapsed time while it runs,
# and the end of the log if it fails.
run_logged() {
    local label="$1" log="$log_dir/$2"
    shift 2
    local started=$SECONDS
    "$@" >"$log" 2>&1 &
    local pid=$!
    if [[ -t 1 ]]; then
        while kill -0 "$pid" 2>/dev/null; do
            printf '\r\e[K    %s %s(%ds, log: %s)%s' "$label" "$dim" $((SECONDS - started)) "$log" "$reset"
            sleep 1
        done
        printf '\r\e[K'
    fi
    if ! wait "$pid"; then
        printf '    %s: failed after %ds; the end of %s:\n' "$label" $((SECONDS - started)) "$log" >&2
        tail -n 30 "$log" | sed 's/^/      /' >&2
        exit 1
    fi
    note "$label: done in $((SECONDS - started))s"
}

# ---------------------------------------------------------------------------------------
# Docker and Compose

compose_cmd=()
find_compose() {
    if [[ -n ${ROLLCALL_COMPOSE:-} ]]; then
        read -r -a compose_cmd <<<"$ROLLCALL_COMPOSE"
    elif docker compose version >/dev/null 2>&1; then
        compose_cmd=(docker compose)
    elif command -v docker-compose >/dev/null; then
        compose_cmd=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' is installed"
    fi
}
compose() {
    local files=(-f "$repo_dir/docker-compose.yml")
    [[ ${ha:-no} == yes ]] && files+=(-f "$repo_dir/docker-compose.ha.yml")
    "${compose_cmd[@]}" "${files[@]}" -p "$COMPOSE_PROJECT_NAME" "$@"
}
# Whether the running project is the --ha one (its second registry replica exists).
running_ha() {
    [[ -n $(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
        --filter label=com.docker.compose.service=bootstrap-2 2>/dev/null) ]]
}

require_docker() {
    command -v docker >/dev/null || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running, may this user use it?)"
    find_compose
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# True when the image is here or can be pulled (quietly, within a minute).
can_get_image() {
    have_image "$1" && return 0
    timeout 60 docker pull -q "$1" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------
# Building

# Builds the static binaries on the host and stages them in docker/bin for the images.
# Static (glibc, +crt-static) so that they run in any image, the Alpine-based Consul image
# included, whatever C library the build host has.
build_binaries() {
    local out="$repo_dir/target/$rust_target/release" bin
    if [[ ${ROLLCALL_SKIP_CARGO:-} == 1 ]] || ! command -v cargo >/dev/null; then
        for bin in "${binaries[@]}"; do
            [[ -x $repo_dir/docker/bin/$bin ]] || die "cargo is needed to build $bin (https://rustup.rs)"
        done
        for bin in "${binaries[@]}"; do assert_static "$repo_dir/docker/bin/$bin"; done
        note "not building with cargo; using the binaries already in docker/bin"
        return
    fi
    run_logged "cargo build --release (static)" cargo.log \
        env RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --target "$rust_target" -p rollcall-registry -p rollcall-sidecar
    mkdir -p "$repo_dir/docker/bin"
    for bin in "${binaries[@]}"; do
        assert_static "$out/$bin"
        # Debug info stays in target/; the images get the smaller binary. Copy only on change
        # so that Docker's build cache holds.
        local staged="$repo_dir/docker/bin/$bin" fresh="$log_dir/$bin"
        if command -v objcopy >/dev/null; then
            objcopy --strip-debug "$out/$bin" "$fresh"
        else
            cp "$out/$bin" "$fresh"
        fi
        cmp -s "$fresh" "$staged" || install -m 0755 "$fresh" "$staged"
    done
}

assert_static() {
    local description
    if command -v file >/dev/null; then
        description="$(file -b "$1")"
        [[ $description == *"statically linked"* || $description == *"static-pie linked"* ]] ||
            die "$1 is not statically linked: $description"
    elif ldd "$1" >/dev/null 2>&1 && ! ldd "$1" 2>&1 | grep -q 'statically linked'; then
        die "$1 is not statically linked: $(ldd "$1" 2>&1 | head -n 3)"
    fi
}

# debian:bookworm-slim is pulled where a registry answers, and otherwise created from
# Debian's packages with the mirror this machine's apt uses.
ensure_base_image() {
    if have_image "$base_image"; then
        return
    fi
    if timeout 60 docker pull -q "$base_image" >/dev/null 2>&1; then
        note "pulled $base_image"
        return
    fi
    note "$base_image cannot be pulled here; creating it from Debian's packages (debootstrap)"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    run_logged "debootstrap + docker import $base_image" base-image.log \
        "${sudo[@]}" bash "$repo_dir/docker/make-base-image.sh" "$base_image"
}

build_images() {
    local services=(bootstrap raft)
    # The registry's etcd runs from the etcd node image (for a Consul raft too).
    [[ ${ha:-no} == yes ]] && services+=(registry-etcd-1)
    run_logged "docker images (registry, $ROLLCALL_ENGINE node)" images.log compose build "${services[@]}"
}

# ---------------------------------------------------------------------------------------
# The registry's view

# The published registry port, on loopback unless ROLLCALL_BIND names one address.
registry_url() {
    local host="${ROLLCALL_BIND:-127.0.0.1}"
    [[ $host == 0.0.0.0 || $host == "::" ]] && host=127.0.0.1
    [[ $host == *:* ]] && host="[$host]"
    printf 'http://%s:%s' "$host" "$ROLLCALL_REGISTRY_PORT"
}

# One line per live member, tab-separated: node, address, role, in_raft, is_leader, leader.
# The sidecar binary built for the images reads the registry's answer with the protocol's
# own types. It runs with an empty environment: the ROLLCALL_* variables here configure
# the containers (a ROLLCALL_ROLE would filter this list). Its errors go to members.log.
members_tsv() {
    env -i "$repo_dir/docker/bin/rollcall-sidecar" --registry "$(registry_url)" --cluster "$ROLLCALL_CLUSTER" --request-timeout 3s \
        members --format tsv 2>"$log_dir/members.log"
}

# Sets members, servers, outside (servers that say they are not in a raft), leaders (how
# many say they lead) and leader (the leader every server names, empty unless they agree).
read_state() {
    local lines seen
    members=0 servers=0 outside=0 leaders=0 leader=""
    lines="$(members_tsv)" || return 1
    [[ -n $lines ]] || return 0
    members=$(printf '%s\n' "$lines" | wc -l)
    servers=$(printf '%s\n' "$lines" | awk -F'\t' '$3 == "server"' | wc -l)
    outside=$(printf '%s\n' "$lines" | awk -F'\t' '$3 == "server" && $4 == "false"' | wc -l)
    leaders=$(printf '%s\n' "$lines" | awk -F'\t' '$5 == "true"' | wc -l)
    seen="$(printf '%s\n' "$lines" | awk -F'\t' '$3 == "server" { print $6 }' | sort -u)"
    if [[ $(printf '%s\n' "$seen" | wc -l) -eq 1 && -n $seen ]]; then
        leader="$seen"
    fi
}

# Healthy: every node listed, the servers wanted, all of them in the raft and naming the
# same leader, and no more than one claiming to lead.
raft_is_healthy() {
    ((members == $1 && servers == $2 && outside == 0 && leaders <= 1)) && [[ -n $leader ]]
}

wait_until_healthy() {
    local want_members="$1" want_servers="$2" timeout="$3"
    local started=$SECONDS line=""
    while true; do
        local elapsed=$((SECONDS - started))
        if read_state; then
            line="$members/$want_members members, $((servers - outside))/$want_servers servers in the raft, leader: ${leader:-none}"
            if raft_is_healthy "$want_members" "$want_servers"; then
                [[ -t 1 ]] && printf '\r\e[K'
                note "${green}healthy${reset} after ${elapsed}s: $line"
                healthy_after=$elapsed
                return 0
            fi
        else
            line="registry not answering yet at $(registry_url)"
        fi
        if ((elapsed >= timeout)); then
            [[ -t 1 ]] && printf '\r\e[K'
            printf '%serror:%s the raft is not healthy after %ss (%s)\n' "$red" "$reset" "$timeout" "$line" >&2
            "${diagnose:-compose_diagnose}"
            exit 1
        fi
        if [[ -t 1 ]]; then
            printf '\r\e[K    waiting: %s %s(%ds)%s' "$line" "$dim" "$elapsed" "$reset"
        elif ((elapsed % 10 == 0)); then
            note "waiting: $line (${elapsed}s)"
        fi
        sleep 1
    done
}

compose_diagnose() {
    compose ps >&2 || true
    compose logs --tail=20 >&2 || true
}

print_state() {
    local lines
    lines="$(members_tsv)" || die "the registry does not answer at $(registry_url) ($(tail -n 1 "$log_dir/members.log"))"
    printf '\n%s%-16s %-22s %-7s %-8s %s%s\n' "$bold" NODE ADDRESS ROLE IN-RAFT LEADER "$reset"
    # awk, not `read`: a tab is whitespace to `read`, which would merge empty fields.
    [[ -z $lines ]] || awk -F'\t' '{
        printf "%-16s %-22s %-7s %-8s %s%s\n", $1, $2, $3, ($4 == "" ? "-" : $4), ($6 == "" ? "-" : $6), ($5 == "true" ? " (leader)" : "")
    }' <<<"$lines"
    printf '\n'
    local engine
    engine="$(running_engine)"
    printf '%sregistry%s    http://localhost:%s/   (members: http://localhost:%s/v1/clusters/%s/members)\n' \
        "$bold" "$reset" "$ROLLCALL_REGISTRY_PORT" "$ROLLCALL_REGISTRY_PORT" "$ROLLCALL_CLUSTER"
    [[ ${ha:-no} == yes ]] && print_replicas
    local port
    case "$engine" in
        consul)
            port="$("${port_of:-published_port}" 8500)"
            printf '%sConsul UI%s   http://localhost:%s/ui/\n' "$bold" "$reset" "$port"
            printf '%smembers%s     docker exec %s consul members\n' "$bold" "$reset" "$("${node_of:-first_node}")"
            browser_url="http://localhost:$port/ui/"
            ;;
        etcd)
            port="$("${port_of:-published_port}" 2379)"
            printf '%setcd%s        etcdctl --endpoints=http://127.0.0.1:%s member list -w table\n' "$bold" "$reset" "$port"
            # etcd listens on the node's own address, not on its loopback.
            printf '            %s(in a node: docker exec %s sh -c '\''etcdctl --endpoints=$(hostname -i):2379 member list -w table'\'')%s\n' "$dim" "$("${node_of:-first_node}")" "$reset"
            browser_url="http://localhost:$ROLLCALL_REGISTRY_PORT/"
            ;;
    esac
    printf '%sstop%s        bash start.sh down%s\n' "$bold" "$reset" "${swarm_flag:-}"
}

first_node() { compose ps -q raft 2>/dev/null | head -n 1 | cut -c1-12; }

# --ha: each registry replica's role, as its /health says.
print_replicas() {
    local port role base
    command -v curl >/dev/null || return 0
    base="$(registry_url)"
    for port in "$ROLLCALL_REGISTRY_PORT" "${ROLLCALL_REGISTRY_PORT_2:-7401}"; do
        role="$(curl -fsS --max-time 3 "${base%:*}:$port/health" 2>/dev/null |
            sed -n 's/.*"replica":{"role":"\([a-z]*\)","name":"\([^"]*\)".*/\2 (\1)/p')"
        printf '%sreplica%s     http://localhost:%s/   %s\n' "$bold" "$reset" "$port" "${role:-not answering}"
    done
}

# One variable of a container's environment (Docker's own list, one NAME=VALUE a line).
container_env() {
    docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$1" | sed -n "s/^$2=//p"
}

# A raft whose engine changes is replaced, not reconfigured: its containers and their data
# go. The registry remembers that raft and refuses new nodes (reset_required) until an
# operator resets the cluster, so start.sh, which is making that decision for the operator,
# removes the old nodes and resets the cluster, and says so. The same when the registry
# remembers a raft of which no container is left.
#
# A raft whose size changes (--nodes) is resized, not replaced: its data stays.
#   growing:   `rollcall-registry resize` first, so that the new nodes take server slots;
#   shrinking: resize, then `rollcall-sidecar leave` in each node to remove (the newest
#              ones, which Compose would remove first), which takes it out of the raft for
#              good, then its container and volume are removed. A plain `docker stop` or a
#              Compose scale-down would only stop it: the raft would keep it as a member.
# The running containers keep their environment (--no-recreate): recreating them all at
# once would restart the whole raft.
reconcile_running_raft() {
    local registry_id ids first engine expect generation reason="" count
    registry_id="$(compose ps -q bootstrap 2>/dev/null | head -n 1)"
    [[ -n $registry_id ]] || return 0
    ids="$(compose ps -q raft 2>/dev/null)"
    if [[ -n $ids ]]; then
        first="$(printf '%s\n' "$ids" | head -n 1)"
        engine="$(container_env "$first" ROLLCALL_ENGINE)"
        expect="$(container_env "$first" ROLLCALL_EXPECT)"
        count="$(printf '%s\n' "$ids" | grep -c .)"
        if [[ $engine == "$ROLLCALL_ENGINE" ]]; then
            [[ $expect == "$ROLLCALL_EXPECT" && $count == "$ROLLCALL_NODES" ]] && return 0
            resize_running_raft "$registry_id" "$count"
            return 0
        fi
        reason="start.sh replaced the $engine raft (expect ${expect:-?}) with a $ROLLCALL_ENGINE raft (expect $ROLLCALL_EXPECT)"
        step "replacing the running raft: $engine (expect ${expect:-?}) -> $ROLLCALL_ENGINE (expect $ROLLCALL_EXPECT); its nodes and their data are removed"
        run_logged "remove the old raft" rm-raft.log compose rm --force --stop -v raft
    fi
    generation="$(docker exec "$registry_id" rollcall-registry generation "$ROLLCALL_CLUSTER")" ||
        die "cannot ask the registry for cluster $ROLLCALL_CLUSTER's generation"
    ((generation > 0)) || return 0
    reason="${reason:-start.sh started new raft nodes; no container of generation $generation was left}"
    step "resetting cluster $ROLLCALL_CLUSTER (generation $generation) in the registry: $reason"
    # Nodes that were stopped leave the registry at once; one that did not leaves within a TTL.
    local deadline=$((SECONDS + 60)) said
    until said="$(docker exec "$registry_id" rollcall-registry reset "$ROLLCALL_CLUSTER" \
        --generation "$generation" --reason "$reason" 2>&1)"; do
        ((SECONDS < deadline)) || die "the registry refused the reset for 60s: $said"
        sleep 2
    done
    note "reset: the next node bootstraps generation $((generation + 1))"
}

# Resizes the running raft to $ROLLCALL_EXPECT voters and $ROLLCALL_NODES containers.
resize_running_raft() {
    local registry_id="$1" count="$2" generation said id
    generation="$(docker exec "$registry_id" rollcall-registry generation "$ROLLCALL_CLUSTER")" ||
        die "cannot ask the registry for cluster $ROLLCALL_CLUSTER's generation"
    step "resizing the running raft: $count -> $ROLLCALL_NODES nodes, expect $ROLLCALL_EXPECT (its data stays)"
    if ((generation > 0)); then
        said="$(docker exec "$registry_id" rollcall-registry resize "$ROLLCALL_CLUSTER" --expect "$ROLLCALL_EXPECT" \
            --generation "$generation" --reason "start.sh --nodes $ROLLCALL_NODES" 2>&1)" ||
            die "the registry refused the resize: $said"
        note "$said"
    fi
    if ((count > ROLLCALL_NODES)); then
        # The newest containers go, as a Compose scale-down would choose them.
        local leaving
        leaving="$(docker ps --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
            --filter label=com.docker.compose.service=raft \
            --format '{{.Label "com.docker.compose.container-number"}} {{.ID}}' |
            sort -n | tail -n $((count - ROLLCALL_NODES)) | awk '{ print $2 }')"
        [[ $(wc -w <<<"$leaving") -eq $((count - ROLLCALL_NODES)) ]] ||
            die "cannot tell which $((count - ROLLCALL_NODES)) raft containers to remove (found: ${leaving:-none})"
        for id in $leaving; do
            run_logged "node ${id:0:12} leaves the raft" "leave-${id:0:12}.log" docker exec "$id" rollcall-sidecar leave
            # The sidecar stops its agent and exits once it has left; then the container goes.
            docker wait "$id" >/dev/null 2>&1 || true
            docker rm -f -v "$id" >/dev/null
        done
    fi
    up_flags+=(--no-recreate)
}

published_port() {
    compose port --index=1 raft "$1" 2>/dev/null | sed 's/.*://'
}

running_engine() {
    local id
    id="$("${node_of:-first_node}")"
    [[ -n $id ]] || return 0
    docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$id" | sed -n 's/^ROLLCALL_ENGINE=//p'
}

open_browser() {
    [[ -n ${browser_url:-} && ${open_browser:-yes} == yes && -t 1 ]] || return 0
    [[ -n ${DISPLAY:-}${WAYLAND_DISPLAY:-} ]] || return 0
    if command -v xdg-open >/dev/null; then
        xdg-open "$browser_url" >/dev/null 2>&1 &
    fi
}

# ---------------------------------------------------------------------------------------
# Commands

# Engine: --engine, else ROLLCALL_ENGINE, else Consul when its image can be had.
choose_engine() {
    if [[ -z ${ROLLCALL_ENGINE:-} ]]; then
        if can_get_image "$consul_image"; then
            ROLLCALL_ENGINE=consul
        else
            printf '%s cannot be pulled here: running the etcd raft instead (--engine to choose).\n' "$consul_image"
            ROLLCALL_ENGINE=etcd
        fi
    fi
    case "$ROLLCALL_ENGINE" in
        etcd) ;;
        consul) can_get_image "$consul_image" || die "--engine consul needs the image $consul_image, which cannot be pulled here" ;;
        *) die "unknown engine '$ROLLCALL_ENGINE' (consul or etcd)" ;;
    esac
    export ROLLCALL_ENGINE
}

# Sets want_servers and ROLLCALL_EXPECT: up to the most servers a claim may ask for become
# servers; the registry just built says how many that is (`rollcall-registry defaults`).
compute_servers() {
    local max_expect
    max_expect="$(env -i "$repo_dir/docker/bin/rollcall-registry" defaults MAX_EXPECT)" ||
        die "docker/bin/rollcall-registry cannot run on this machine"
    want_servers=$((ROLLCALL_NODES < max_expect ? ROLLCALL_NODES : max_expect))
    export ROLLCALL_EXPECT="${ROLLCALL_EXPECT:-$want_servers}"
    want_servers=$((ROLLCALL_EXPECT < ROLLCALL_NODES ? ROLLCALL_EXPECT : ROLLCALL_NODES))
}

command_up() {
    local started=$SECONDS
    require_docker

    choose_engine
    export ROLLCALL_NODES="${ROLLCALL_NODES:-3}"
    [[ $ROLLCALL_NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number"

    step "building (engine: $ROLLCALL_ENGINE, compose: ${compose_cmd[*]}, project: $COMPOSE_PROJECT_NAME)"
    build_binaries
    compute_servers
    ensure_base_image
    build_images

    up_flags=()
    reconcile_running_raft

    step "starting the registry and $ROLLCALL_NODES $ROLLCALL_ENGINE nodes"
    run_logged "compose up" up.log compose up -d --no-build --remove-orphans "${up_flags[@]}" --scale raft="$ROLLCALL_NODES"

    step "waiting for a healthy raft ($want_servers servers, one leader) as the registry sees it"
    wait_until_healthy "$ROLLCALL_NODES" "$want_servers" "${timeout:-180}"
    print_state
    note "${dim}ready ${SECONDS}s after start.sh began; the raft was healthy ${healthy_after}s after 'compose up'${reset}"
    open_browser
}

command_status() {
    require_docker
    running_ha && ha=yes
    [[ -x $repo_dir/docker/bin/rollcall-sidecar ]] || die "docker/bin/rollcall-sidecar is missing: 'bash start.sh' builds it"
    print_state
}

command_down() {
    require_docker
    # With the --ha file too, so that the registry's etcd and its volumes go as well.
    ha=yes
    step "removing project $COMPOSE_PROJECT_NAME (containers, network, volumes)"
    # The engine only names the raft image; any value lets Compose find the containers.
    ROLLCALL_ENGINE="${ROLLCALL_ENGINE:-etcd}" compose down -v --remove-orphans --timeout 20
}

action=up
open_browser=yes
while (($#)); do
    case "$1" in
        up | down | status) action="$1" ;;
        --engine) ROLLCALL_ENGINE="${2:?--engine needs consul or etcd}"; shift ;;
        --engine=*) ROLLCALL_ENGINE="${1#*=}" ;;
        --nodes) ROLLCALL_NODES="${2:?--nodes needs a number}"; shift ;;
        --nodes=*) ROLLCALL_NODES="${1#*=}" ;;
        --timeout) timeout="${2:?--timeout needs seconds}"; shift ;;
        --timeout=*) timeout="${1#*=}" ;;
        --no-browser) open_browser=no ;;
        --swarm) swarm=yes ;;
        --ha) ha=yes ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 64 ;;
    esac
    shift
done

if [[ ${swarm:-no} == yes ]]; then
    # shellcheck source=scripts/swarm.sh
    source "$repo_dir/scripts/swarm.sh"
    node_of=swarm_first_node port_of=swarm_published_port swarm_flag=" --swarm"
    case "$action" in
        up | down) action="${action}_swarm" ;;
    esac
fi
"command_$action"
