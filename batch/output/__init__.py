"""Output: run layout, staging and the atomic commit, the typed manifest, verifying a committed run."""
