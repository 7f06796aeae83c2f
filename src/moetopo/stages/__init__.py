"""Stage logic: each module turns inputs into the rows of one artefact."""
