"""Preference tuning: DPO and its variants (IPO, hinge, SimPO) on TRL's preference formats,
through the one Trainer loop (``DPOTrainer``), with a frozen copy, the LoRA-disabled model or
precomputed log-probs as the reference."""

from .config import DPOConfig, PreferenceDataConfig
from .dataset import PreferencePairs, from_preference_hf, from_preference_json, from_preference_samples
from .loss import preference_loss, sequence_logps
from .trainer import DPOTrainer

__all__ = ["DPOConfig", "DPOTrainer", "PreferenceDataConfig", "PreferencePairs", "from_preference_hf",
           "from_preference_json", "from_preference_samples", "preference_loss", "sequence_logps"]
