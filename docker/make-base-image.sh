#!/usr/bin/env bash
# Creates a local debian:bookworm-slim image from Debian's packages, for machines that have
# a Docker engine but cannot pull images.
#
# The package mirror, and the apt settings that make that mirror work (proxies, snapshot
# validity checks), are read at run time from this machine's own apt configuration and
# baked into the image, so that `apt-get install` inside `docker build` reaches the same
# mirror the host uses. Nothing here names a mirror: set ROLLCALL_DEBIAN_MIRROR to override
# what the host's configuration says.
#
# Usage: docker/make-base-image.sh [IMAGE]     (default: debian:bookworm-slim)
# Needs root (debootstrap) and debootstrap (installed with apt-get when missing).
set -euo pipefail

image="${1:-debian:bookworm-slim}"
suite="${ROLLCALL_DEBIAN_SUITE:-bookworm}"

say() { printf '%s\n' "make-base-image: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root; run as root (or with sudo)"

# Every apt source stanza of the host, one per line, as "TYPES|URIS|SUITES|SIGNED_BY|FILE",
# from deb822 .sources files and one-line .list files.
host_source_stanzas() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk -v file="$file" '
            function flush() { if (uris != "") print types "|" uris "|" suites "|" signed "|" file; types = uris = suites = signed = ""; enabled = 1 }
            BEGIN { enabled = 1 }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            tolower($1) == "types:"     { $1 = ""; types = $0 }
            tolower($1) == "uris:"      { $1 = ""; uris = $0 }
            tolower($1) == "suites:"    { $1 = ""; suites = $0 }
            tolower($1) == "signed-by:" { $1 = ""; signed = $0 }
            tolower($1) == "enabled:" && tolower($2) == "no" { uris = "" }
            END { flush() }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$file" | awk -v file="$file" '$1 == "deb" && NF >= 3 { print "deb|" $2 "|" $3 "||" file }'
    done
}

# The first host mirror that serves SUITE (a suite listed as exactly that word).
mirror_for_suite() {
    local wanted="$1"
    host_source_stanzas | awk -F'|' -v want="$wanted" '
        $1 ~ /(^|[[:space:]])deb([[:space:]]|$)/ {
            n = split($3, s, /[[:space:]]+/)
            for (i = 1; i <= n; i++) if (s[i] == want) { split($2, u, /[[:space:]]+/); for (j = 1; j <= length(u); j++) if (u[j] != "") { print u[j]; exit } }
        }'
}

mirror="${ROLLCALL_DEBIAN_MIRROR:-$(mirror_for_suite "$suite")}"
[[ -n $mirror ]] || die "no apt source of this machine serves '$suite'; set ROLLCALL_DEBIAN_MIRROR to a Debian mirror URL"
security_mirror="${ROLLCALL_DEBIAN_SECURITY_MIRROR:-$(mirror_for_suite "$suite-security")}"

# Proxies configured for apt also apply to debootstrap, which downloads with wget.
eval "$(apt-config shell ROLLCALL_APT_HTTP_PROXY Acquire::http::Proxy ROLLCALL_APT_HTTPS_PROXY Acquire::https::Proxy 2>/dev/null || true)"
[[ -n ${ROLLCALL_APT_HTTP_PROXY:-} && ${ROLLCALL_APT_HTTP_PROXY} != DIRECT ]] && export http_proxy="$ROLLCALL_APT_HTTP_PROXY"
[[ -n ${ROLLCALL_APT_HTTPS_PROXY:-} && ${ROLLCALL_APT_HTTPS_PROXY} != DIRECT ]] && export https_proxy="$ROLLCALL_APT_HTTPS_PROXY"

if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || die "debootstrap is missing and there is no apt-get to install it"
    say "installing debootstrap with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1; then
        # A fresh machine may not have read its package lists yet.
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
keyring_args=()
[[ -f $keyring ]] && keyring_args=(--keyring="$keyring")

work="$(mktemp -d "${TMPDIR:-/var/tmp}/rollcall-rootfs.XXXXXX")"
rootfs="$work/rootfs"
cleanup() {
    # debootstrap mounts /proc and /sys inside the rootfs; never delete through a mount.
    local mount
    for mount in $(awk -v root="$rootfs" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$mount" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

say "debootstrap $suite (minbase) from $mirror into $rootfs"
started=$SECONDS
if ! debootstrap --variant=minbase "${keyring_args[@]}" "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
fi

# apt sources for the image: the host's own stanzas for this suite, in deb822 form.
rm -f "$rootfs/etc/apt/sources.list"
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' \
        "$mirror" "$suite" "$suite" "$keyring"
    if [[ -n $security_mirror ]]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
            "$security_mirror" "$suite" "$keyring"
    fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"

# The host's local apt settings that shape how the mirror is reached (files that no package
# owns and that set Acquire:: options: proxies, snapshot validity checks and the like).
for conf in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
    [[ -f $conf ]] || continue
    grep -qi 'Acquire' "$conf" || continue
    dpkg -S "$conf" >/dev/null 2>&1 && continue
    install -m 0644 "$conf" "$rootfs/etc/apt/apt.conf.d/$(basename "$conf")"
    say "carried apt setting $(basename "$conf") into the image"
done

# What makes the official image "slim": no docs, man pages or translations, no apt caches.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
SLIM
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

say "importing the rootfs as $image"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'LABEL org.opencontainers.image.description="Debian '"$suite"' minbase, created locally by rollcall docker/make-base-image.sh"' \
    --change 'LABEL io.rollcall.base-image=debootstrap' \
    - "$image" >/dev/null
say "$image created in $((SECONDS - started))s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
