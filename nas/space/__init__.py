"""Search spaces as data: what a space offers (choices.py), read from its TOML file (spaces.py),
sampled as a genome (genome.py), its exact cheapest networks (cheapest.py) and its description
(describe.py)."""
