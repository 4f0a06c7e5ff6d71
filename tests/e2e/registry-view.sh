# Reading the registry in the Docker end-to-end tests, sourced by docker.sh and swarm.sh.
# Each sets `registry` (the registry's base URL) and has run start.sh, which built
# docker/bin/rollcall-sidecar, before it calls these.

# node <TAB> address <TAB> role <TAB> in_raft <TAB> is_leader <TAB> leader, per live member:
# `rollcall-sidecar members --format tsv`, the binary start.sh built for the images,
# with an empty environment so that none of this run's ROLLCALL_* settings changes the read.
# Nothing when the registry does not answer.
members_tsv() {
    env -i "$repo_dir/docker/bin/rollcall-sidecar" --registry "$registry" --cluster default \
        --request-timeout 3s members --format tsv 2>/dev/null || true
}
member_count() { members_tsv | grep -c . || true; }
server_count() { members_tsv | awk -F'\t' '$3 == "server"' | grep -c . || true; }
is_listed() { members_tsv | awk -F'\t' -v n="$1" '$1 == n { found = 1 } END { exit !found }'; }
address_of() { members_tsv | awk -F'\t' -v n="$1" '$1 == n { print $2 }'; }

# Polls a condition (a shell command) every 0.25s until it holds or `timeout` seconds pass;
# prints the seconds it took (to the hundredth).
wait_for() {
    local timeout="$1"
    shift
    local start end
    start=$(date +%s.%N)
    while true; do
        if "$@"; then
            end=$(date +%s.%N)
            awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
            return 0
        fi
        end=$(date +%s.%N)
        if awk -v s="$start" -v e="$end" -v t="$timeout" 'BEGIN { exit !(e - s > t) }'; then
            return 1
        fi
        sleep 0.25
    done
}

# Every node listed, the servers wanted, all of them in the raft, one of them leading, and
# all of them naming the same leader.
healthy_raft() { # members servers
    local tsv
    tsv="$(members_tsv)"
    awk -F'\t' -v want_members="$1" -v want_servers="$2" '
        { members++ }
        $3 == "server" { servers++; if ($4 == "false") outside++; if ($5 == "true") leading++; named[$6] = 1 }
        END {
            for (name in named) distinct++
            exit !(members == want_members && servers == want_servers && outside == 0 && leading == 1 && distinct == 1 && !("" in named))
        }' <<<"$tsv"
}
registry_answers() { curl -fsS --max-time 2 "$registry/health" >/dev/null 2>&1; }
all_listed() { local n; for n in "$@"; do is_listed "$n" || return 1; done; }
not_listed() { ! is_listed "$1"; }
no_members() { [[ $(member_count) -eq 0 ]]; }
