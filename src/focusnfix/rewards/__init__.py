"""Rewards r(I, c): see :mod:`focusnfix.rewards.base` for the contract."""
from .base import Reward, RewardOutput, call_reward, check_output
from .classifier import ClassifierReward
from .color import ColorReward

__all__ = ["Reward", "RewardOutput", "call_reward", "check_output", "ClassifierReward", "ColorReward"]
