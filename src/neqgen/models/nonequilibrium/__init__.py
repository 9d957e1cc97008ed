"""Models that learn a transport process rather than an energy."""
