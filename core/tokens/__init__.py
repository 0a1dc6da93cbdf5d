"""Tokens: weights cut into fixed-size tokens, stored in shards, and read back in windows."""
