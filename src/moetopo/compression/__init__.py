"""What removing or merging experts costs: selection criteria, reduced MoE blocks, and their
layer-wise error against the full block on the tokens the layer really sees."""
