"""Downstream biology from predicted (or measured) expression: tissue domains, their agreement with
labels, differential expression and gene-set enrichment."""
