#!/usr/bin/env bash
# Makes sure the Docker engine and Compose answer: installs docker.io and docker-compose
# (Compose v1.29) from Debian where they are missing, starts the engine (systemd where
# it runs, else dockerd in the background, logging to /var/log/dockerd.log) and waits
# until `docker info` answers. Needs root; does nothing where the engine already runs.
set -euo pipefail

engine_answers() { docker info >/dev/null 2>&1; }
compose_installed() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }

if engine_answers && compose_installed; then
    echo "docker.sh: the engine answers and compose is installed" >&2
    exit 0
fi

if ! command -v dockerd >/dev/null || ! compose_installed; then
    echo "docker.sh: installing docker.io and docker-compose" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q docker.io docker-compose >/dev/null
fi

if ! engine_answers; then
    if [[ -d /run/systemd/system ]] && systemctl start docker 2>/dev/null; then
        echo "docker.sh: started docker with systemd" >&2
    else
        echo "docker.sh: starting dockerd in the background (log: /var/log/dockerd.log)" >&2
        nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 60); do
        engine_answers && break
        sleep 1
    done
fi

if ! engine_answers; then
    echo "docker.sh: the Docker engine does not answer; last lines of its log:" >&2
    tail -n 20 /var/log/dockerd.log >&2 || true
    exit 1
fi
docker version --format 'docker.sh: engine {{.Server.Version}}, client {{.Client.Version}}' >&2
{ docker compose version 2>/dev/null || docker-compose version --short; } | sed 's/^/docker.sh: compose /' >&2
