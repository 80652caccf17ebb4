"""Models: the repository (versions, aliases, promotion), signing and verification, signatures, loading a SavedModel."""
