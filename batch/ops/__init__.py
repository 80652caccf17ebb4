"""Operations over many runs: incremental (up-to-date) runs and backfills."""
