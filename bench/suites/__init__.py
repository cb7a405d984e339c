"""The benchmarks, one module per measured area; each exposes ``async run(lab)``."""
