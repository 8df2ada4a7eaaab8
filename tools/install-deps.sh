#!/bin/sh
# Installs what building and testing dsv32 needs, from Debian's apt only.
# Idempotent and non-interactive; uses sudo when not root.
set -eu
PKGS="build-essential clang pkg-config libpcre2-dev libcjson-dev libmicrohttpd-dev zstd"
# Model parallelism across processes (make MPI=1, mpirun): Open MPI.
PKGS="$PKGS openmpi-bin libopenmpi-dev"
# The server's client tests: node and npm (they install the openai client and
# puppeteer-core from npm) and Chromium for the chat page. A node that came
# from elsewhere, with its own npm, is kept.
command -v node >/dev/null && command -v npm >/dev/null || PKGS="$PKGS nodejs npm"
PKGS="$PKGS chromium"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
