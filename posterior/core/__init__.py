"""Core containers and checks every other part builds on: trajectories, time grids, input
validation and the log Z / sample-quality estimators. Imports nothing else of the library."""
