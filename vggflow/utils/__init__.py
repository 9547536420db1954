"""Small helpers: atomic files, seeding, provenance."""
