#!/usr/bin/env bash
# Makes sure the Debian packages of e2e/tools/debian-packages.txt are installed, so that a fresh machine needs
# nothing by hand: as root it installs the missing ones non-interactively (CI: no stdin, CI=true); otherwise it
# stops at once with the exact apt-get command, instead of a traceback deep inside a test run. Every
# `make test`/`make demo` runs it, so the common case (nothing missing) is one dpkg-query call.
#
# Hooks for tests (nothing is installed through them):
#   SYSTEM_DEPS_FILE=path      another package list
#   SYSTEM_DEPS_AS_ROOT=0|1    decide "root" instead of asking the kernel
#   SYSTEM_DEPS_DRY_RUN=1      print the apt-get/useradd commands a root run would execute, run none
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
list=${SYSTEM_DEPS_FILE:-$here/debian-packages.txt}
dry_run=${SYSTEM_DEPS_DRY_RUN:-0}
if [ -n "${SYSTEM_DEPS_AS_ROOT:-}" ]; then
  as_root=$SYSTEM_DEPS_AS_ROOT
elif [ "$EUID" = 0 ]; then
  as_root=1
else
  as_root=0
fi
# PostgreSQL refuses to run as root: as root, the platform runs it as this user (operator/mlinfra/devenv/postgres.py).
pg_user=mlinfra-pg

say() { printf '== system-deps: %s\n' "$*"; }
fail() { printf '== system-deps: %s\n' "$*" >&2; exit 1; }

[ -r "$list" ] || fail "cannot read the package list $list"

# "package   # what needs it": the reason is printed with the package when it is missing. Names are checked
# because they end up in a command line printed for the user to paste.
packages=() reasons=()
n=0
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  [[ $line =~ ^[[:space:]]*([^#[:space:]]*)[[:space:]]*(#[[:space:]]*(.*))?$ ]] ||
    fail "$list:$n: expected one package name, then optionally '# why': $line"
  pkg=${BASH_REMATCH[1]} reason=${BASH_REMATCH[3]}
  [ -n "$pkg" ] || continue
  [[ $pkg =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || fail "$list:$n: not a Debian package name: $pkg"
  packages+=("$pkg") reasons+=("$reason")
done <"$list"
[ ${#packages[@]} -gt 0 ] || fail "no packages listed in $list"

if ! command -v dpkg-query >/dev/null; then
  # Not Debian: apt cannot help, and the binaries may well come from elsewhere; the platform names what it
  # cannot find when it starts.
  say "no dpkg-query (not a Debian machine): not checking; the platform needs the equivalents of: ${packages[*]}"
  exit 0
fi

# One call for the whole list keeps the warm path fast. Unknown names make dpkg-query exit 1; they are missing,
# and so are packages removed with their configuration kept ("config-files") or half installed.
declare -A installed=()
while read -r pkg status; do
  [ "$status" != installed ] || installed[$pkg]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null || true)
missing=() why=()
for i in "${!packages[@]}"; do
  if [ -z "${installed[${packages[$i]}]:-}" ]; then
    missing+=("${packages[$i]}") why+=("${packages[$i]}${reasons[$i]:+ (${reasons[$i]})}")
  fi
done

need_user=0
if [ "$as_root" = 1 ] && ! getent passwd "$pg_user" >/dev/null; then
  need_user=1
fi

if [ ${#missing[@]} = 0 ] && [ $need_user = 0 ]; then
  say "all ${#packages[@]} Debian packages of ${list#"$PWD"/} are installed"
  exit 0
fi

if [ ${#missing[@]} -gt 0 ] && [ "$as_root" != 1 ]; then
  {
    printf '== system-deps: %d Debian package(s) missing, and only root can install them:\n' "${#missing[@]}"
    printf '     %s\n' "${why[@]}"
    printf '   Run this (or `sudo make system-deps`), then make again:\n'
    printf '     sudo apt-get update && sudo apt-get install -y --no-install-recommends %s\n' "${missing[*]}"
  } >&2
  exit 1
fi

# run CMD...: the command (output into the log), or in a dry run just its text.
run() {
  if [ "$dry_run" = 1 ]; then
    printf '   would run: %s\n' "$*"
  else
    "$@" </dev/null >>"$log" 2>&1
  fi
}

log=${MLINFRA_CACHE:-$HOME/.cache/mlinfra}/logs/system-deps.log
[ "$dry_run" = 1 ] || mkdir -p "$(dirname "$log")"

if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Another apt (unattended-upgrades, a parallel job) may hold the locks: wait for them rather than fail; keep
  # the configuration files already there instead of asking.
  apt_opts=(-o DPkg::Lock::Timeout=120 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  say "installing ${#missing[@]} missing Debian package(s) with apt-get (log: $log):"
  printf '     %s\n' "${why[@]}"
  # `apt-get update` also takes the lists lock, which older apt does not wait for: retry a few times.
  for attempt in 1 2 3 4; do
    if run apt-get "${apt_opts[@]}" update -qq; then break; fi
    [ $attempt -lt 4 ] || { tail -n 20 "$log" >&2; fail "apt-get update failed 4 times (log: $log)"; }
    say "apt-get update failed (apt busy?), retrying in 15 s"
    sleep 15
  done
  run apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" || {
    tail -n 20 "$log" >&2
    fail "apt-get install ${missing[*]} failed (log: $log)"
  }
fi

if [ $need_user = 1 ]; then
  say "creating the unprivileged system user $pg_user (PostgreSQL refuses to run as root)"
  run useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
fi
[ "$dry_run" != 1 ] && say "done" || say "dry run: nothing was installed"
