"""The demo's behaviour policy: trained on a wall-clock budget, cached as safetensors, reloaded equal."""

import torch

from envs.behaviour import train_behaviour_policy


def test_behaviour_policy_is_cached_and_reloaded(tmp_path, one_torch_thread):
    path = tmp_path / "cache" / "ppo.safetensors"
    trained = train_behaviour_policy("Pendulum-v1", path, minutes=0.0, seed=0, num_envs=1)
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    reloaded = train_behaviour_policy(
        "Pendulum-v1", path, minutes=60.0, seed=1, num_envs=1
    )  # cached: no training
    assert reloaded.num_timesteps == 0
    for (name, a), b in zip(
        trained.policy.state_dict().items(), reloaded.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
