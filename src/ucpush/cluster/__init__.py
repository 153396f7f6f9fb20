"""Several call nodes as one cluster (SPEC §3, §6 HA; docs/cluster.md): node groups and device
pools in the shared store, live membership, shared bindings and the local push mesh in Redis."""
