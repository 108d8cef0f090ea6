"""Training: a small single-process loop (simple.py, used by the demo and examples) and the
sharded ``rankmixer-train`` pipeline (cli.py, loop.py; see docs/training.md)."""
