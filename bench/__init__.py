"""Benchmarks of the Referrals API: the handlers against the raw azure-data-tables calls they need.

    make bench                      # or: .venv/bin/python -m bench.run [--quick] [--profile CASE]

Everything runs against one in-memory Azurite started by the run; results are printed and written to
`bench/results/` (git-ignored). See docs/benchmarks.md for the method and the recorded figures.
"""
