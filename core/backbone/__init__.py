"""The backbone: a SANE-style transformer autoencoder over weight tokens (model, losses, training)."""
