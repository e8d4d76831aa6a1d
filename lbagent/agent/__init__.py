"""Training (torch): DreamerV3 world model + RL² actor, the sim-train loop, and the SB3 A2C baseline.

Module map: ``config`` (every choice, one dataclass), ``nets`` (MLP, layer-normed GRU, two-hot,
categoricals), ``world_model`` (encoder, RSSM, decoder, heads, KL balancing), ``actor_critic`` (RL²
actor, critic, lambda-returns, return normalization, imagination), ``replay_buffer`` (sequences with
the actor's memory), ``dreamer`` (one gradient update), ``train`` (presets, the loop, checkpoints,
policy files), ``a2c`` (stable-baselines3 adapter and export). Acting runs the numpy actor of
``lbagent.policy.numpy_actor``, which is what ships; nothing below ``lbagent.agent`` imports torch.
"""
