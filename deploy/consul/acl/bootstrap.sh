#!/bin/sh
# Bootstraps Consul ACLs and creates Tandem's policy and token; prints only that token's SecretID on stdout.
#
#   CONSUL_HTTP_ADDR=http://10.0.0.11:8500 sh deploy/consul/acl/bootstrap.sh [OUT_DIR]
#
# Run once, against any server of a cluster whose agents all have ACLs on (acl.hcl). Steps:
#   1. `consul acl bootstrap`: the management token goes to OUT_DIR/bootstrap.token (mode 600, never
#      printed; keep it safe). Already bootstrapped? Set CONSUL_HTTP_TOKEN_FILE (or CONSUL_HTTP_TOKEN)
#      to a management token and this step is skipped.
#   2. policies `tandem` (tandem-policy.hcl) and `consul-agent` (agent-policy.hcl), created or updated;
#   3. a token for each: OUT_DIR/agent.token (the agents' acl.tokens.agent) and OUT_DIR/tandem.token;
#   4. prints the Tandem token's SecretID (for /etc/tandem/consul.token, read via CONSUL_HTTP_TOKEN_FILE).
# OUT_DIR defaults to ./consul-acl. Consul 1.8.7+: CONSUL_BIN, else a consul on PATH, else ../install.sh's.
# Each run makes two new tokens; old ones stay valid until deleted (consul acl token delete).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-./consul-acl}
: "${CONSUL_HTTP_ADDR:?set CONSUL_HTTP_ADDR to a Consul server HTTP address, e.g. http://127.0.0.11:8500}"
export CONSUL_HTTP_ADDR
consul=${CONSUL_BIN:-$(sh "$here/../install.sh")}

log() { printf 'acl-bootstrap: %s\n' "$*" >&2; }
# First "Key": "value" of Consul's indented JSON on stdin.
field() { sed -n "s/^ *\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" | head -n 1; }

umask 077
mkdir -p "$out"

if [ -n "${CONSUL_HTTP_TOKEN:-}${CONSUL_HTTP_TOKEN_FILE:-}" ]; then
  log "using the management token given in CONSUL_HTTP_TOKEN${CONSUL_HTTP_TOKEN_FILE:+_FILE}; not bootstrapping"
else
  # Right after a cluster starts, 1.8 servers answer "no leader" or "legacy mode" for a few seconds.
  tries=0
  until "$consul" acl bootstrap -format=json > "$out/bootstrap.json" 2> "$out/bootstrap.err"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ] || ! grep -qiE 'legacy|leader|connection refused|EOF' "$out/bootstrap.err"; then
      log "consul acl bootstrap failed: $(cat "$out/bootstrap.err")"
      log "already bootstrapped? Then set CONSUL_HTTP_TOKEN_FILE to a management token file and run again."
      rm -f "$out/bootstrap.json" "$out/bootstrap.err"
      exit 1
    fi
    sleep 2
  done
  field SecretID < "$out/bootstrap.json" > "$out/bootstrap.token"
  rm -f "$out/bootstrap.json" "$out/bootstrap.err"
  [ -s "$out/bootstrap.token" ] || { log "no SecretID in the answer of consul acl bootstrap"; exit 1; }
  log "ACLs bootstrapped; management token in $out/bootstrap.token (mode 600, not printed)"
  CONSUL_HTTP_TOKEN_FILE="$out/bootstrap.token"
  export CONSUL_HTTP_TOKEN_FILE
fi

# upsert_policy NAME RULES_FILE DESCRIPTION
upsert_policy() {
  id=$("$consul" acl policy read -name "$1" -format=json 2>/dev/null | field ID || true)
  if [ -n "$id" ]; then
    "$consul" acl policy update -id "$id" -rules "@$2" -description "$3" > /dev/null
    log "updated policy $1 from $2"
  else
    "$consul" acl policy create -name "$1" -rules "@$2" -description "$3" > /dev/null
    log "created policy $1 from $2"
  fi
}

# new_token POLICY DESCRIPTION FILE: the token's SecretID goes to FILE (mode 600).
new_token() {
  "$consul" acl token create -policy-name "$1" -description "$2" -format=json | field SecretID > "$3"
  [ -s "$3" ] || { log "creating the $1 token failed"; exit 1; }
  log "created a $1 token: $3"
}

upsert_policy tandem "$here/tandem-policy.hcl" 'Tandem sidecars: register services, watch the catalog, KV under tandem/, sessions, events'
upsert_policy consul-agent "$here/agent-policy.hcl" 'Consul agents: register their own node'
new_token consul-agent 'Consul agent token (acl.tokens.agent)' "$out/agent.token"
new_token tandem 'Tandem sidecar token' "$out/tandem.token"
log "next: set $out/agent.token as every agent's agent token, and install $out/tandem.token as /etc/tandem/consul.token"
cat "$out/tandem.token"
