"""Multi-turn rollouts: generation backends and the episode engine."""
