"""Platform SDK (verify claims, apply releases once, mask answers) and reference platforms."""
