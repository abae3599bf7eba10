"""Ways to train many models at once, each declaring the configs it covers (`registry.py`):
batched torch ops, the compiled CPU kernel, the Triton kernel."""
