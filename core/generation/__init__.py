"""Generation: new weights for a chosen architecture, sampled from the backbone's latent space."""
