"""Model versions side by side: comparison, evaluation metrics, canary routing."""
