# The minimal ACL policy of a Tandem sidecar (registration, maintenance, catalog watches, KV under tandem/, sessions, events).
service_prefix "" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "read"
}
key_prefix "tandem/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
event_prefix "" {
  policy = "write"
}
