# ACLs on, deny by default: put this file in the config dir of every Consul server and client agent.
acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  enable_token_persistence = true
  # Instead of `consul acl bootstrap` (bootstrap.sh), a management token of your own can be given here,
  # on the servers only, and kept out of version control. Consul 1.8 spelling; 1.11+ says initial_management.
  # tokens {
  #   master = "<a UUID you generated>"
  # }
}
