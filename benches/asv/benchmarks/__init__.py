"""asv benchmarks of ddm's Python-level operations (see BENCHMARKS.md for how to run them)."""
