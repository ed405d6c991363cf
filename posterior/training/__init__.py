"""The training engine and its parts: configs, batch sources (replay buffer with local search,
importance pool, teacher), exploration and learning-rate schedules, weight averages, checkpoints."""
