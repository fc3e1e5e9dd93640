"""dualcore: a framework-agnostic async core for PostgreSQL and Redis services."""

__version__ = "0.1.0"
