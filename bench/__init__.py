"""Benchmarks that measure the services against bare gRPC references on the same machine."""
