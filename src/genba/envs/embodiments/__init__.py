"""One file per embodiment; each registers its tasks on import."""
