"""batchscore jobs."""
