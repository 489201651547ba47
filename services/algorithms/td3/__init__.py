"""TD3 (Fujimoto et al. 2018): twin critics, delayed policy updates and target policy smoothing."""
