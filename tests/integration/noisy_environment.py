"""An environment whose module prints to standard output when imported (as some plugins do)."""

import gymnasium

print("this module prints when it is imported")

gymnasium.register(
    id="NoisyCartPole-v0",
    entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
    max_episode_steps=500,
)
