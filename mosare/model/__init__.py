"""Models: MoSARe (``mosare.py``, the whole forward pass in one file), its building blocks and the baselines."""
