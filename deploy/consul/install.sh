#!/bin/sh
# Makes a `consul` binary (1.8 or newer) available and prints its absolute path on stdout.
#
# Order: a `consul` on PATH wins; else the copy in the project-local cache (.cache/consul, git-ignored);
# else, on Debian-family systems, Debian bullseye's consul package is fetched with a private apt
# source list and unpacked into the cache, changing nothing under /etc/apt; else it fails and says how
# to install Consul. Idempotent: once done it only checks a file and exits.
# The Debian mirror is the one the system's own apt sources use (deb822 `URIs:` in
# /etc/apt/sources.list.d/*.sources, or `deb URL ...` lines in /etc/apt/sources.list and *.list): a
# machine behind a local mirror or proxy uses it; set TANDEM_DEBIAN_MIRROR to choose another.
# Set TANDEM_CONSUL_CACHE to move the cache; set TANDEM_CONSUL_IGNORE_PATH=1 to skip the PATH lookup.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${TANDEM_CONSUL_CACHE:-$root/.cache/consul}
bin="$cache/bin/consul"
pkg_version='1.8.7+dfsg1-2+b3'
pkg_sha256='e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9'

log() { printf '%s\n' "install-consul: $*" >&2; }

# "Consul v1.8.7" -> succeeds when the version is 1.8 or newer.
version_ok() {
  v=$("$1" version 2>/dev/null | sed -n 's/^Consul v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' | head -n 1)
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 1 ] || { [ "$1" -eq 1 ] && [ "$2" -ge 8 ]; }
}

if [ "${TANDEM_CONSUL_IGNORE_PATH:-0}" != 1 ] && found=$(command -v consul 2>/dev/null); then
  if version_ok "$found"; then
    printf '%s\n' "$found"
    exit 0
  fi
  log "ignoring $found: it is older than Consul 1.8"
fi

if [ -x "$bin" ] && version_ok "$bin"; then
  printf '%s\n' "$bin"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  log "no consul found and this is not a Debian-family system."
  log "Install Consul 1.8 or newer (https://developer.hashicorp.com/consul/install) and put it on PATH."
  exit 1
fi

# The system's Debian archive mirror (not the security archive, not third-party repositories).
system_mirror() {
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] && sed -n 's/^[[:space:]]*URIs:[[:space:]]*//p' "$f" | tr ' ' '\n'
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] && sed -n 's/^[[:space:]]*deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p' "$f"
    done
  } | grep -E '^(https?|file)://' | grep -E '/debian/?$' | grep -v -- '-security' | head -n 1 | sed 's#/$##'
}

arch=$(dpkg --print-architecture 2>/dev/null || echo unknown)
mirror=${TANDEM_DEBIAN_MIRROR:-$(system_mirror)}
if [ -z "$mirror" ]; then
  log "no Debian mirror found in /etc/apt's sources; set TANDEM_DEBIAN_MIRROR (e.g. your local mirror's .../debian URL),"
  log "or install Consul 1.8+ by hand and put it on PATH."
  exit 1
fi
log "fetching Debian bullseye's consul $pkg_version ($arch) from $mirror into $cache (nothing under /etc/apt changes)"
work="$cache/apt"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/out" "$cache/bin"
echo "deb $mirror bullseye main" > "$work/bullseye.list"
# Private source list and private state: apt reads and writes only below $work.
set -- -o "Dir::Etc::SourceList=$work/bullseye.list" -o Dir::Etc::SourceParts=/dev/null \
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Dir::Cache::pkgcache= \
  -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root -o Debug::NoLocking=1

if ! ls "$work/out"/consul_*"_${arch}.deb" >/dev/null 2>&1; then
  if ! apt-get "$@" -q update >&2; then
    log "apt-get update against Debian bullseye failed; install Consul 1.8+ by hand and put it on PATH."
    exit 1
  fi
  if ! (cd "$work/out" && apt-get "$@" -q download "consul=$pkg_version" >&2); then
    log "downloading the consul package failed; install Consul 1.8+ by hand and put it on PATH."
    exit 1
  fi
fi
deb=$(ls "$work/out"/consul_*"_${arch}.deb" | head -n 1)

if [ "$arch" = amd64 ] && command -v sha256sum >/dev/null 2>&1; then
  sum=$(sha256sum "$deb" | cut -d' ' -f1)
  if [ "$sum" != "$pkg_sha256" ]; then
    log "checksum mismatch for $deb (got $sum); refusing to use it"
    rm -f "$deb"
    exit 1
  fi
fi

rm -rf "$work/ex"
dpkg-deb -x "$deb" "$work/ex"
cp "$work/ex/usr/bin/consul" "$bin.tmp"
chmod 755 "$bin.tmp"
mv "$bin.tmp" "$bin"
version_ok "$bin" || { log "the unpacked consul does not run"; exit 1; }
log "installed $("$bin" version | head -n 1)"
printf '%s\n' "$bin"
