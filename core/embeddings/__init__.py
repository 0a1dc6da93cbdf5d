"""Embeddings: encode models with the backbone, build maps, measure distances, probe properties."""
