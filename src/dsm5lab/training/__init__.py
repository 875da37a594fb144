"""Training components: losses."""
