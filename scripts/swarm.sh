# The Swarm half of start.sh (`bash start.sh --swarm`, `bash start.sh down --swarm`), sourced
# by it: the same build, the same wait for a healthy raft as the registry sees it and the same
# summary as the Compose path, with `docker stack deploy` of docker-stack.yml instead of
# Compose. Not meant to be run by itself.
#
# A swarm that start.sh makes (the engine was in none) carries the node label
# rollcall.made-by=start.sh; `down --swarm` leaves only such a swarm. The label lives in the
# swarm itself, so it goes when the swarm goes.

export ROLLCALL_STACK="${ROLLCALL_STACK:-rollcall}"
export ROLLCALL_SWARM_SUBNET="${ROLLCALL_SWARM_SUBNET:-10.77.0.0/24}"

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null; }

# Makes a single-node swarm when the engine is in none, and says which it is.
ensure_swarm() {
    local state
    state="$(swarm_state)"
    case "$state" in
        active)
            if [[ $(docker node inspect self --format '{{index .Spec.Labels "rollcall.made-by"}}' 2>/dev/null) == start.sh ]]; then
                note "using the single-node swarm start.sh made earlier"
            else
                note "using the swarm this engine is in (start.sh did not make it and will not leave it)"
            fi
            ;;
        inactive)
            run_logged "docker swarm init (single node, advertised on 127.0.0.1)" swarm-init.log \
                docker swarm init --advertise-addr 127.0.0.1
            docker node update --label-add rollcall.made-by=start.sh "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
            ;;
        *) die "this engine's swarm is '$state'; start.sh needs an active swarm or none" ;;
    esac
    [[ $(docker info --format '{{.Swarm.ControlAvailable}}') == true ]] ||
        die "this node is not a swarm manager: run start.sh --swarm on a manager"
}

# The token every task reads from the secret rollcall_token: ROLLCALL_TOKEN when set, else a
# random one kept next to start.sh's logs (the same across deploys: a secret cannot change
# under a running stack).
prepare_token_secret() {
    export ROLLCALL_TOKEN_SECRET_FILE="$log_dir/swarm-token"
    if [[ -n ${ROLLCALL_TOKEN:-} ]]; then
        (umask 077 && printf '%s\n' "$ROLLCALL_TOKEN" >"$ROLLCALL_TOKEN_SECRET_FILE")
    elif [[ ! -s $ROLLCALL_TOKEN_SECRET_FILE ]]; then
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ROLLCALL_TOKEN_SECRET_FILE" &&
            printf '\n' >>"$ROLLCALL_TOKEN_SECRET_FILE")
        note "generated a token for the registry's writes: $ROLLCALL_TOKEN_SECRET_FILE"
    fi
}

raft_service() { printf '%s_raft' "$ROLLCALL_STACK"; }

# The raft's running containers on this node, one id a line, by task slot.
raft_containers() {
    docker ps --filter "label=com.docker.swarm.service.name=$(raft_service)" \
        --format '{{.Label "com.docker.swarm.task.name"}} {{.ID}}' | sort -t. -k2 -n | awk '{ print $2 }'
}

swarm_first_node() { raft_containers | head -n 1 | cut -c1-12; }

swarm_published_port() {
    local id
    id="$(raft_containers | head -n 1)"
    [[ -n $id ]] || return 0
    docker port "$id" "$1/tcp" 2>/dev/null | head -n 1 | sed 's/.*://'
}

swarm_diagnose() {
    docker stack ps --no-trunc "$ROLLCALL_STACK" >&2 || true
    docker service logs --tail 20 "$(raft_service)" >&2 || true
}

command_up_swarm() {
    require_docker
    choose_engine
    export ROLLCALL_NODES="${ROLLCALL_NODES:-3}"
    [[ $ROLLCALL_NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number"
    case "$ROLLCALL_ENGINE" in
        etcd) export ROLLCALL_RAFT_DATA_DIR=/var/lib/etcd ROLLCALL_RAFT_CLIENT_PORT=2379 ;;
        consul) export ROLLCALL_RAFT_DATA_DIR=/consul/data ROLLCALL_RAFT_CLIENT_PORT=8500 ;;
    esac

    step "building (engine: $ROLLCALL_ENGINE, swarm stack: $ROLLCALL_STACK)"
    build_binaries
    compute_servers
    ensure_base_image
    build_images

    step "swarm"
    ensure_swarm
    prepare_token_secret
    if docker service inspect "$(raft_service)" >/dev/null 2>&1; then
        local running
        running="$(docker service inspect "$(raft_service)" --format '{{.Spec.Mode.Replicated.Replicas}}')"
        if [[ $running != "$ROLLCALL_NODES" ]]; then
            # A grown raft takes voters only after the registry's resize; a shrunk one loses
            # tasks Swarm picks, whose members the leader's sidecar removes after
            # --dead-member-after (Swarm cannot be told which task to stop first).
            swarm_resize_registry "$running"
        fi
    fi
    step "deploying stack $ROLLCALL_STACK: the registry and $ROLLCALL_NODES $ROLLCALL_ENGINE tasks (overlay $ROLLCALL_SWARM_SUBNET)"
    local started=$SECONDS
    run_logged "docker stack deploy" stack-deploy.log \
        docker stack deploy --prune --resolve-image never -c "$repo_dir/docker-stack.yml" "$ROLLCALL_STACK"

    step "waiting for a healthy raft ($want_servers servers, one leader) as the registry sees it"
    diagnose=swarm_diagnose
    wait_until_healthy "$ROLLCALL_NODES" "$want_servers" "${timeout:-180}"
    print_state
    note "${dim}ready ${SECONDS}s after start.sh began; the raft was healthy $((SECONDS - started))s after 'docker stack deploy'${reset}"
    open_browser
}

# `rollcall-registry resize` in the registry's task before Swarm changes the raft's size.
swarm_resize_registry() {
    local running="$1" registry_id generation said
    registry_id="$(docker ps -q --filter "label=com.docker.swarm.service.name=${ROLLCALL_STACK}_bootstrap" | head -n 1)"
    [[ -n $registry_id ]] || die "the stack's registry task is not running on this node"
    generation="$(docker exec "$registry_id" rollcall-registry generation "$ROLLCALL_CLUSTER")" ||
        die "cannot ask the registry for cluster $ROLLCALL_CLUSTER's generation"
    step "resizing the raft: $running -> $ROLLCALL_NODES tasks, expect $ROLLCALL_EXPECT (its data stays)"
    ((generation > 0)) || return 0
    said="$(docker exec "$registry_id" rollcall-registry resize "$ROLLCALL_CLUSTER" --expect "$ROLLCALL_EXPECT" \
        --generation "$generation" --reason "start.sh --swarm --nodes $ROLLCALL_NODES" 2>&1)" ||
        die "the registry refused the resize: $said"
    note "$said"
}

command_down_swarm() {
    require_docker
    if [[ $(swarm_state) != active ]]; then
        note "this engine is in no swarm: nothing to remove"
        return 0
    fi
    step "removing stack $ROLLCALL_STACK (services, network, secret, volumes)"
    docker stack rm "$ROLLCALL_STACK" >/dev/null 2>&1 || true
    # The tasks' containers stop within their grace periods; the volumes go after them.
    local deadline=$((SECONDS + 60)) left
    while left="$(docker ps -aq --filter "label=com.docker.stack.namespace=$ROLLCALL_STACK")" && [[ -n $left ]]; do
        ((SECONDS < deadline)) || die "the stack's containers are still there after 60s: $(tr '\n' ' ' <<<"$left")"
        sleep 1
    done
    local volumes
    volumes="$( {
        docker volume ls -q --filter "label=com.docker.stack.namespace=$ROLLCALL_STACK"
        docker volume ls -q --filter "name=^${ROLLCALL_STACK}_raft-data-"
    } | sort -u)"
    # shellcheck disable=SC2086 # one volume name a word
    [[ -z $volumes ]] || docker volume rm $volumes >/dev/null
    note "removed $(grep -c . <<<"$volumes" || true) volume(s)"
    deadline=$((SECONDS + 30))
    while docker network inspect "${ROLLCALL_STACK}_raft" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "the stack's network ${ROLLCALL_STACK}_raft is still there after 30s"
        sleep 1
    done
    if [[ $(docker node inspect self --format '{{index .Spec.Labels "rollcall.made-by"}}' 2>/dev/null) == start.sh ]]; then
        step "leaving the single-node swarm start.sh made"
        docker swarm leave --force >/dev/null
        # Swarm made this bridge for its tasks' outside traffic; nothing else uses it now.
        docker network rm docker_gwbridge >/dev/null 2>&1 || true
    else
        note "the swarm stays: start.sh did not make it"
    fi
}
