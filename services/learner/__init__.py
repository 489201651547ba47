"""The learner: training, priority updates and the parameter service."""
