"""neqgen: generative models of driven stochastic systems, tracked and versioned."""

__version__ = "0.1.0"
