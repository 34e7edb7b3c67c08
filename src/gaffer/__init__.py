"""gaffer: a distributed build system and content-addressed build cache."""

__version__ = "0.1.0"
