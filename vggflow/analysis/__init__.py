"""Pure analysis: DataFrames in, files out (tables and figures)."""
