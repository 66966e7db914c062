# ACL policy of the Consul agents' own token (acl.tokens.agent): register their node, read services.
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
