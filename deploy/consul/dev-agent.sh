#!/bin/sh
# Runs a Consul dev agent in the foreground on 127.0.0.1 (HTTP and UI on port ${CONSUL_HTTP_PORT:-8500}).
# Installs Consul first if needed (see install.sh). Ctrl-C stops it; a dev agent keeps nothing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
consul=$(sh "$here/install.sh")
port=${CONSUL_HTTP_PORT:-8500}
echo "Consul UI: http://127.0.0.1:$port/ui" >&2
exec "$consul" agent -dev -config-file "$here/dev.hcl" -client 127.0.0.1 -bind 127.0.0.1 \
  -http-port "$port" -dns-port -1 -grpc-port -1 -node "${CONSUL_NODE_NAME:-tandem-dev}"
