"""The actor: environments, exploration, n-step transitions, local priorities."""
