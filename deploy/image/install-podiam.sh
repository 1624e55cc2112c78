#!/bin/bash
# Installs podiam from a checkout into a virtualenv: the steps of the image's build stage,
# kept in one script so that the Dockerfile and CI (tests/image/) run the same ones.
#
# usage: install-podiam.sh SOURCE PREFIX
#   SOURCE  a checkout (pyproject.toml, README.md, src/)
#   PREFIX  the virtualenv to create (/opt/podiam in the image); it must not exist
#
# 1. podiam's wheel is built without network from a copy of SOURCE (a build in the checkout
#    would leave build/ and egg-info behind) with the backend pyproject.toml's
#    [build-system] names, installed into a throwaway build venv;
# 2. PREFIX is a venv without pip, setuptools or wheel; the build venv's pip installs the
#    wheel there with its runtime dependencies only (wheels only: no compiler, no sdist);
# 3. what a pod-credential agent never runs is removed (botocore's models of services other
#    than STS and the SSO ones of its credential chain), and every module is compiled once
#    here with unchecked-hash pycs: the root file system is read-only at run time, and
#    Python then neither tries to write a .pyc nor stats the sources to check one.
#
# Where packages come from is pip's own configuration: PyPI by default; CI builds from a
# wheelhouse with PIP_NO_INDEX=1 and PIP_FIND_LINKS=DIR.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 SOURCE PREFIX" >&2
  exit 2
fi
source_dir=$1 prefix=$2
if [ -e "$prefix" ]; then
  echo "$0: $prefix exists; give a new directory" >&2
  exit 2
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/build"
build_requires=$(python3 -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$source_dir/pyproject.toml")
mapfile -t build_requires <<<"$build_requires"
"$work/build/bin/pip" install --quiet --only-binary=:all: "${build_requires[@]}"

mkdir "$work/source"
cp -p "$source_dir/pyproject.toml" "$source_dir/README.md" "$work/source/"
cp -pR "$source_dir/src" "$work/source/src"
find "$work/source" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$work/build/bin/pip" wheel --quiet --no-deps --no-build-isolation --no-index --wheel-dir "$work/dist" "$work/source"
wheels=("$work"/dist/podiam-*.whl)

python3 -m venv --without-pip "$prefix"
"$work/build/bin/pip" --python "$prefix/bin/python" install --quiet --no-compile --only-binary=:all: "${wheels[0]}"

site=$("$prefix/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
# botocore carries the models of every AWS service (~27 MB); podiam's STS client loads sts/,
# and the credential chain may load sso/ and sso-oidc/ (an SSO profile). The top-level files
# (endpoints, partitions, retry and default configuration) are loaded for every client.
find "$site/botocore/data" -mindepth 1 -maxdepth 1 -type d \
  ! -name sts ! -name sso ! -name sso-oidc -exec rm -rf {} +
find "$prefix" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
"$prefix/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$site" >/dev/null

"$prefix/bin/podiam" --version
