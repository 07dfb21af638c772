"""GRPO: reinforcement learning with verifiable rewards, on our models and our generation.

- ``config``: ``GRPOConfig`` (group size, sampling, rewards, clipping, KL, loss type),
  ``PromptDataConfig``;
- ``data``: ``from_prompt_samples`` / ``from_prompt_json`` (TRL's prompt-only rows);
- ``rewards``: reward functions with TRL's signature and the built-ins;
- ``loss``: group advantages and the clipped policy loss with the k3 KL;
- ``rollout``: prompts -> sampled groups -> scored training batches;
- ``trainer``: ``GRPOTrainer``, the Trainer loop with that objective;
- ``synthetic``: built-in prompts with checkable answers (3-digit addition, long reversals).
"""

from .config import GRPOConfig, PromptDataConfig
from .data import from_prompt_json, from_prompt_samples
from .rewards import char_match, exact_match, numeric_answer, regex_match
from .synthetic import synthetic_prompts
from .trainer import GRPOTrainer

__all__ = ["GRPOConfig", "PromptDataConfig", "GRPOTrainer", "from_prompt_samples", "from_prompt_json",
           "exact_match", "regex_match", "numeric_answer", "char_match", "synthetic_prompts"]
