"""A study, without torch: its settings, where it is stored, what it says (counts, Pareto front, best trial), its notes and report."""
