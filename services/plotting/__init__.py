"""Learning curves of run folders from their ``metrics.csv``: ``apexrl plot`` and ``learning_curve.png``."""
