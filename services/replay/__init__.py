"""The replay shard: prioritized experience replay storage served over gRPC (no torch)."""
