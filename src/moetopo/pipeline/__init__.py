"""What the Snakefile needs at parse time: the sheets, their layouts, job sizes.

Nothing here reads a tensor or imports a stage, so every Snakemake call stays cheap.
"""
