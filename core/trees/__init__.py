"""Model trees: lineage recovered from weights (``weightatlas lineage``), compared with the
declared ``base_model``; MoTHer's algorithm as the baseline beside the project's own."""
