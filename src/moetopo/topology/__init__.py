"""Topology of one MoE layer's experts: persistent homology, the Vietoris-Rips 2-complex,
its Hodge decomposition, a sheaf of expert input subspaces, and HodgeCover selection.

Pure functions on numpy arrays; :func:`moetopo.topology.layer.layer_topology` runs them all.
"""
