"""Collection: find models on the Hub, in an HF cache or a folder, check them, and record them."""
