"""CAMARA Number Recycling v0.2.0 (release r2.2) over the gateway's recycled check."""
