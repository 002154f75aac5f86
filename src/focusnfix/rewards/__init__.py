"""Rewards r(I, c): see :mod:`focusnfix.rewards.base` for the contract."""
from .base import Reward, RewardOutput, check_output
from .classifier import ClassifierReward
from .color import ColorReward

__all__ = ["Reward", "RewardOutput", "check_output", "ClassifierReward", "ColorReward"]
