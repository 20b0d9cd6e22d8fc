"""RL building blocks that work with any Gymnasium environment."""
