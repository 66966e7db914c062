# Settings for a throwaway Consul dev agent (in memory, single server, UI on). Ports, node name and
# data are given on the command line by deploy/consul/dev-agent.sh, `tandem dev` and the test helper,
# so several agents can run side by side.
ui = true
log_level = "warn"
disable_update_check = true
enable_script_checks = false
enable_local_script_checks = false
# Reap services whose checks stay critical for long: only if the service asked for it.
performance {
  raft_multiplier = 1
}
