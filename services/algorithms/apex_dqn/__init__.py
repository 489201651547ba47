"""Ape-X DQN (Horgan et al. 2018): double, dueling, n-step Q-learning with prioritized replay."""
