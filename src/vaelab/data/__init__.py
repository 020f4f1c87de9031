"""Bits in: datasets, named sources, .npz/.amat/IDX readers and binarization. Knows nothing of models."""
