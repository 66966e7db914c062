# Consul client agent, one per application host (see ../README.md); Tandem on the host talks to it on 127.0.0.1:8500.
datacenter = "dc1"
data_dir   = "/var/lib/consul"
server     = false

# This host's private address: other hosts reach its services there, and Tandem advertises it by default.
bind_addr      = "{{ GetPrivateIP }}"
advertise_addr = "{{ GetPrivateIP }}"
# The HTTP API only for this host's processes (Tandem): loopback.
client_addr = "127.0.0.1"

# The three servers, by DNS name or IP (these names are the docker-compose demo's).
retry_join = ["consul-server-1", "consul-server-2", "consul-server-3"]

log_level                  = "info"
disable_update_check       = true
enable_script_checks       = false
enable_local_script_checks = false

# With ACLs on (../acl/acl.hcl), give the agent its token (from ../acl/bootstrap.sh), e.g. in a
# root-only file beside this one:  acl { tokens { agent = "<agent.token>" } }
