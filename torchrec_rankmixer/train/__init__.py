"""Training: a small single-process loop (demo, examples, tests)."""
