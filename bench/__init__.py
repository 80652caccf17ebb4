"""batchscore's own benchmark (``make bench``)."""
