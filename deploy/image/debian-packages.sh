#!/bin/sh
# The Debian packages of podiam's image, in one place: the Dockerfile installs them onto its
# base (debian:bookworm-slim), and the image test builds its offline base with mmdebstrap
# from the same names (`debian-packages.sh --list runtime build`).
#
#   runtime: Debian's Python 3.11 (the venv's interpreter) and iptables, whose package holds
#            both backends (iptables-nft and iptables-legacy): the agent must write its rule
#            with the backend that already holds the node's rules, or the kernel path never
#            sees it. ca-certificates: the CA bundle for STS over HTTPS. libstdc++6: grpcio's
#            extension links it (split mode's stream), and only apt pulls it into a slim base.
#   build:   python3-venv (ensurepip), for the build stage only.
#
# usage: debian-packages.sh [--list] runtime|build...
# Without --list, installs those that are missing (apt-get, as root) and empties apt's
# caches, so a base that has them all (the offline one) needs no network.
set -eu

runtime="python3 iptables ca-certificates libstdc++6"
build="python3-venv"

list=false
if [ "${1:-}" = --list ]; then list=true; shift; fi
[ $# -gt 0 ] || { echo "usage: $0 [--list] runtime|build..." >&2; exit 2; }
names=""
for set in "$@"; do
  case $set in
    runtime) names="$names $runtime" ;;
    build) names="$names $build" ;;
    *) echo "$0: unknown package set $set (runtime, build)" >&2; exit 2 ;;
  esac
done
if $list; then
  echo $names
  exit 0
fi

missing=""
for name in $names; do
  dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q ' installed$' || missing="$missing $name"
done
[ -n "$missing" ] || exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting wanted: a list of package names
apt-get install -y -qq --no-install-recommends $missing
apt-get clean
rm -rf /var/lib/apt/lists/*
