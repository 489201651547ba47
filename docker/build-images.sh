#!/usr/bin/env bash
# `make images`: builds the replay, learner, actor and evaluator images from a wheelhouse
# made on this host, then prints their sizes and the time of each stage.
#
# Environment (all optional):
#   BASE_IMAGE           base of every image; default python:3.11-slim-bookworm if it is
#                        present or can be pulled, else a local one from docker/base-image.sh
#   OFFLINE=1            skip the pull attempt and use (or build) the local base at once
#   APEXRL_IMAGE_PREFIX  image names are PREFIX/SERVICE (default apexrl)
#   APEXRL_IMAGE_TAG     image tag (default latest)
#   PYTHON               the Python that builds the wheelhouse (default .venv/bin/python);
#                        its version must be the base image's python3 version
set -euo pipefail
cd "$(dirname "$0")/.."

readonly OFFICIAL_BASE=python:3.11-slim-bookworm
readonly LOCAL_BASE=apexrl/python-base:bookworm
readonly WHEELHOUSE=build/wheelhouse
readonly SERVICES=(replay learner actor evaluator)
python=${PYTHON:-.venv/bin/python}
prefix=${APEXRL_IMAGE_PREFIX:-apexrl}
tag=${APEXRL_IMAGE_TAG:-latest}

stage_names=()
stage_seconds=()
stage_started=0
begin() {
    echo "== images: $1" >&2
    stage_names+=("$1")
    stage_started=$EPOCHREALTIME
}
end() {
    stage_seconds+=("$(awk -v a="$stage_started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')")
}

if [[ ! -e apexrl/.generated ]]; then
    echo "build-images.sh: the generated protobuf code is missing; run make protos (make images does)" >&2
    exit 2
fi

# 1. Every package the images install, as wheels; the apexrl wheel carries the
#    generated code. A fresh folder each time, so no stale version can be picked;
#    SOURCE_DATE_EPOCH makes the apexrl wheel byte-identical while the code is, so
#    Docker's layer cache holds across rebuilds.
begin "wheelhouse ($WHEELHOUSE)"
rm -rf "$WHEELHOUSE"
mkdir -p build
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
    "$python" -m pip wheel --disable-pip-version-check -c constraints.txt \
    --wheel-dir "$WHEELHOUSE" '.[train,atari]' >build/wheelhouse.log 2>&1 || {
    tail -n 30 build/wheelhouse.log >&2
    exit 1
}
echo "build-images.sh: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels," \
    "$(du -sh "$WHEELHOUSE" | cut -f1) (log: build/wheelhouse.log)" >&2
end

# 2. The base image: the one asked for, the official one, or a local one.
begin "base image"
base=${BASE_IMAGE:-}
if [[ -z $base ]]; then
    if [[ ${OFFLINE:-0} != 1 ]] && { docker image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 \
        || timeout 300 docker pull --quiet "$OFFICIAL_BASE" >/dev/null 2>&1; }; then
        base=$OFFICIAL_BASE
    else
        echo "build-images.sh: $OFFICIAL_BASE is not available; using the local base $LOCAL_BASE" >&2
        base=$LOCAL_BASE
        if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
            docker/base-image.sh "$LOCAL_BASE"
        fi
    fi
fi
host_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
base_python=$(docker run --rm --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ $host_python != "$base_python" ]]; then
    echo "build-images.sh: the wheelhouse is for Python $host_python but $base has $base_python;" \
        "pick a BASE_IMAGE with Python $host_python (or PYTHON=python$base_python)" >&2
    exit 2
fi
echo "build-images.sh: base $base (Python $base_python)" >&2
end

# 3. One target per service. The learner, actor and evaluator targets share every
#    layer but their metadata, so after the first the others come from the cache.
for service in "${SERVICES[@]}"; do
    begin "build $prefix/$service:$tag"
    docker build --file docker/Dockerfile --build-arg "BASE_IMAGE=$base" \
        --target "$service" --tag "$prefix/$service:$tag" . >"build/image-$service.log" 2>&1 || {
        tail -n 30 "build/image-$service.log" >&2
        exit 1
    }
    end
done

echo
echo "stage seconds"
for i in "${!stage_names[@]}"; do
    printf '  %-45s %7s\n' "${stage_names[$i]}" "${stage_seconds[$i]}"
done
echo "image sizes (base $base: $(docker image inspect -f '{{.Size}}' "$base" | numfmt --to=si)B;" \
    "shared: layers common to several images, stored once)"
docker system df -v | awk -v prefix="$prefix/" -v tag="$tag" '
    /^REPOSITORY/ { print "  " $0; next }
    index($1, prefix) == 1 && $2 == tag { print "  " $0 }
    /^Containers space usage/ { exit }'
