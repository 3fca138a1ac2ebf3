"""What streams cost: one record per stream, and where records go."""
