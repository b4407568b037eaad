"""Search spaces as data: a TOML file becomes a Space that samples genomes within a budget."""
