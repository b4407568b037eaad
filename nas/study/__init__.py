"""A study, without torch: its settings, where it is stored, what it says (counts, Pareto front,
best trial), its notes and report.

- settings.py: what defines a search; seeds.py: the networks a new study starts from.
- storage.py: where a study lives (storage URLs, the study lock, opening studies); outages.py:
  storage faults that pass; keeper.py: heartbeats, the reaping of dead workers' trials, retries.
- analytics.py: what a study says (outcomes, the Pareto front, the best trial, the rules' replays).
- notes.py: what optuna-dashboard shows (notes, artifacts); trial_note.py and study_note.py: the
  notes' words, which the report reuses.
- report.py: report.html (figures.py: its plots) and trials.csv (trials_csv.py).
"""
