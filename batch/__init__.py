"""batchscore batch."""
