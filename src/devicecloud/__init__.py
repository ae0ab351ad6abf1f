"""devicecloud: a self-hosted, Particle-compatible device cloud."""

__version__ = "0.1.0"
