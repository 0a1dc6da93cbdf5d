"""Models: the registry of architectures that can be built, loaded, trained and saved."""
