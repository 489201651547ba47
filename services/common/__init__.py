"""Code the services share: wire codecs, serving, channels, metrics endpoints, configuration."""
