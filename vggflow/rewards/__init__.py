"""Differentiable reward models behind the :class:`~vggflow.rewards.base.Reward` protocol."""
