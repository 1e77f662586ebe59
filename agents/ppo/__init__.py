"""AarenPPO: PPO whose actor and critic carry Aaren memory, inside Stable-Baselines3; its policy
(`policy`), safe exports (`export`), the benchmark's task table (`tasks`) and run directories (`train`).

    from agents.ppo import AarenPPO
"""

from agents.ppo.algorithm import AarenPPO
from agents.ppo.export import export_policy, load_exported_policy

__all__ = ["AarenPPO", "export_policy", "load_exported_policy"]
