"""batchscore runners."""
