"""Messages and workers used by Chirp's own test suite."""
