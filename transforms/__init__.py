"""batchscore transforms."""
