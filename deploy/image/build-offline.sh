#!/bin/bash
# Builds deploy/image/Dockerfile with no registry: what CI does (tests/image/), and what a
# machine that reaches only Debian's and PyPI's package archives can do.
#
# usage: deploy/image/build-offline.sh IMAGE          build the image, tag it IMAGE
#        deploy/image/build-offline.sh --containers-conf   print the podman configuration it uses
#
# 1. The base: Debian bookworm's Essential packages and those of debian-packages.sh, made by
#    mmdebstrap from Debian's archive and imported into podman. It is kept, tagged by a
#    hash of what went into it, and reused while that hash holds.
# 2. A wheelhouse: pip (with this machine's pip configuration) downloads podiam's build
#    requirements and the wheels of its runtime dependencies for the base's Python (3.11).
# 3. podman build of the Dockerfile on that base, with no network at all: the Debian
#    packages are already in the base, and pip installs from the wheelhouse only.
#
# Needs root, mmdebstrap, eatmydata, podman and runc (scripts/setup installs them) and
# PYTHON (default .venv/bin/python) with pip. Prints how long each step took.
set -euo pipefail
cd "$(dirname "$0")/../.."

# podman's defaults fail on machines like CI's: root there lacks CAP_SYS_RESOURCE, so the
# rlimits podman asks for by default (above the current hard limits) are refused, and crun
# refuses cgroup v1 with a cgroup v2 hierarchy beside it ("hybrid"), where runc works.
containers_conf() {
  local nofile
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' \
    "$nofile" "$nofile"
}
if [ "${1:-}" = --containers-conf ]; then
  containers_conf
  exit 0
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 IMAGE | --containers-conf" >&2
  exit 2
fi
image=$1
python=${PYTHON:-.venv/bin/python}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${CONTAINERS_CONF:-}" ]; then
  containers_conf >"$work/containers.conf"
  export CONTAINERS_CONF=$work/containers.conf
fi
step_started=$SECONDS
step() {
  echo "build-offline: $1 ($((SECONDS - step_started)) s)"
  step_started=$SECONDS
}

packages=$(deploy/image/debian-packages.sh --list runtime build)
# Docs, manuals and translations are left out of the base; eatmydata skips dpkg's fsyncs,
# which otherwise take most of the time.
mmdebstrap_args=(--variant=essential --include="${packages// /,}"
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' bookworm)
base_hash=$(printf '%s\n' "${mmdebstrap_args[@]}" | sha256sum | cut -c1-12)
base=localhost/podiam-offline-base:$base_hash
if podman image exists "$base"; then
  step "base $base: kept from an earlier build"
else
  mmdebstrap --quiet "${mmdebstrap_args[@]}" - | podman import --quiet - "$base" >/dev/null
  step "base $base: made by mmdebstrap"
fi

mapfile -t requirements < <("$python" -c 'import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(project["build-system"]["requires"] + project["project"]["dependencies"]))')
# The wheels must suit the base's Python and C library, not this machine's.
read -r base_python glibc < <(podman run --rm --network=none "$base" python3 -c 'import platform, sys
print("%d.%d" % sys.version_info[:2], platform.libc_ver()[1].replace(".", "_"))')
# pip takes a custom platform literally: name every manylinux tag that glibc satisfies.
platforms=()
for minor in $(seq "${glibc#2_}" -1 5); do platforms+=(--platform "manylinux_2_${minor}_$(uname -m)"); done
platforms+=(--platform "manylinux2014_$(uname -m)" --platform "manylinux2010_$(uname -m)"
  --platform "manylinux1_$(uname -m)")
"$python" -m pip download --quiet --disable-pip-version-check --dest "$work/wheels" --only-binary=:all: \
  --python-version "$base_python" --implementation cp "${platforms[@]}" "${requirements[@]}"
step "wheelhouse: $(find "$work/wheels" -name '*.whl' | wc -l) wheels for Python $base_python, glibc ${glibc/_/.}"

# No layer cache (--layers=false): the base is what is worth keeping, and the stages of every
# earlier build would pile up in podman's storage as unnamed images.
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
podman build --layers=false --pull=never --network=none --file deploy/image/Dockerfile --tag "$image" \
  --build-arg BASE="$base" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
  --volume "$work/wheels:/wheels:ro" \
  --build-arg VERSION="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')" \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  . >&2
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true  # still used by a container: left
fi
step "image $image: built"
