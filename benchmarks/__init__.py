"""Speed and memory benchmarks, run by hand: ``python -m benchmarks.training_steps``."""
