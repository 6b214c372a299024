"""Readers and writers: images, spots and counts, cohort tables, h5ad export."""
