"""Side-by-side benchmarks of headreg's runtime against PyTorch: ``python -m benchmarks.run`` (see run.py)."""
