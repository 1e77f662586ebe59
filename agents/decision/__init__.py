"""Offline decision agents (Decision-Transformer style, Aaren or Transformer backbone): the model, the
acting agent, batching, training, run directories and checkpoints, live evaluation, torchrun, sweeps and
the Stable-Baselines3 `DecisionPolicy`. The public names are importable from `agents`."""
