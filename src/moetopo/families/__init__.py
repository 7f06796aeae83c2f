"""Model families as declarative data: one TOML spec per family, shipped with the package."""

from moetopo.families.spec import FamilySpec, load_families, match_family

__all__ = ["FamilySpec", "load_families", "match_family"]
