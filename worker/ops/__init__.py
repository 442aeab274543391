"""Running oaksend: health checks, statistics, retention and the single-machine supervisor."""
