"""Routing as the model does it: each family's selection rule, loads and coactivation."""
