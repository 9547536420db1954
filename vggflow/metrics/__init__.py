"""Metrics: rewards, diversity and Fréchet distances, with injectable feature extractors."""
