#!/usr/bin/env bash
# Builds a local Debian bookworm image with Python 3.11, for machines that cannot pull
# the official python image (no registry): debootstrap a minimal root file system,
# drop package caches and documentation, and `docker import` it.
#
#   docker/base-image.sh [IMAGE]        (default apexrl/python-base:bookworm; needs root)
#
# DEBIAN_MIRROR picks the mirror (default: the one this machine's apt uses).
set -euo pipefail

image=${1:-apexrl/python-base:bookworm}

if [[ $(id -u) -ne 0 ]]; then
    echo "base-image.sh: debootstrap needs root" >&2
    exit 2
fi
if ! command -v debootstrap >/dev/null; then
    echo "base-image.sh: installing debootstrap" >&2
    apt-get install -y -q debootstrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
fi

# The mirror apt uses here (deb822 sources, Debian 12's default), else Debian's own.
default_mirror() {
    sed -n 's|^URIs:[[:space:]]*\([^[:space:]]*/debian\)/\?[[:space:]]*$|\1|p' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1
}
mirror=${DEBIAN_MIRROR:-$(default_mirror)}
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /tmp/apexrl-base.XXXXXX)
trap 'rm -rf "$root" "$root.log"' EXIT

echo "base-image.sh: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"

# The image needs neither apt's caches and lists nor documentation.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "debootstrap bookworm minbase with python3 (apexrl offline base)" \
    - "$image" >/dev/null
echo "base-image.sh: built $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=si)B)" >&2
