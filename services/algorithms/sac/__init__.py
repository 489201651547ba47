"""SAC (Haarnoja et al. 2018): maximum-entropy actor-critic with twin critics and a learned temperature."""
