"""``apexrl test``: deterministic episodes with a saved model, their statistics, videos and rendering."""
