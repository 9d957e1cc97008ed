"""Models that describe p(x, t) as a Boltzmann density exp(-E(x, t)) / Z(t)."""
