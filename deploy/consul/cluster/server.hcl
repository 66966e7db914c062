# Consul server agent, one of three (see ../README.md). The same file on every server host; edit retry_join.
datacenter       = "dc1"
data_dir         = "/var/lib/consul"
server           = true
bootstrap_expect = 3
# Consul 1.8's spelling; 1.9 and newer also accept ui_config { enabled = true }.
ui = true

# This host's private address (a go-sockaddr template); write the address itself on multi-homed hosts.
bind_addr      = "{{ GetPrivateIP }}"
advertise_addr = "{{ GetPrivateIP }}"
# HTTP API and UI on loopback and the private address: firewall port 8500 or enable ACLs (acl/acl.hcl).
client_addr = "127.0.0.1 {{ GetPrivateIP }}"

# Every server, by DNS name or IP (these names are the docker-compose demo's).
retry_join = ["consul-server-1", "consul-server-2", "consul-server-3"]

performance {
  raft_multiplier = 1
}

log_level                  = "info"
disable_update_check       = true
enable_script_checks       = false
enable_local_script_checks = false

# ACLs: add ../acl/acl.hcl to every server's and client's config dir (or uncomment this), restart, then
# run ../acl/bootstrap.sh once.
# acl {
#   enabled                  = true
#   default_policy           = "deny"
#   enable_token_persistence = true
# }
