"""innerloop: the Kubernetes inner dev loop, as fast as working locally."""

__version__ = "0.1.0"
