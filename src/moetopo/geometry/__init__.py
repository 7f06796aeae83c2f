"""Expert geometry: pairwise distances between a layer's experts, and clusters over them.

``sources`` names the distance sources and imports nothing, so the workflow reads it
at parse time without loading numpy or scipy.
"""
