# What the Docker end-to-end tests share, sourced by docker.sh, swarm.sh and ha.sh right after
# they set `e2e_tag` (the log prefix) and `e2e_script` (their path, for messages):
# how they log, the Docker check, and a free loopback port.

say() { printf '[%-5s %4ds] %s\n' "$e2e_tag" "$SECONDS" "$*"; }
pass() { say "PASS  $*"; }
fail() {
    say "FAIL  $*"
    failed=1
    exit 1
}

# Exits unless a Docker engine answers: 0 (skipped) off CI, 1 under CI=true.
require_docker() {
    if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
        if [[ ${CI:-} == true ]]; then
            echo "$e2e_script: FAILED: no Docker engine answers, and CI=true requires one" >&2
            exit 1
        fi
        echo "$e2e_script: SKIPPED: no Docker engine answers here (set CI=true to make this a failure)"
        exit 0
    fi
}

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a loopback port that nothing listens on (one of 50 random tries), or fails.
free_port() {
    local candidate
    for _ in $(seq 1 50); do
        candidate=$((20000 + RANDOM % 20000))
        if port_is_free "$candidate"; then
            printf '%s' "$candidate"
            return 0
        fi
    done
    return 1
}
