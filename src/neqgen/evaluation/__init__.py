"""Per-frame metrics, summaries and figures."""
