"""Budgets per scope (overall, user, team, app, key): their configuration and their periods.

``config`` reads and validates ``include/config/budgets.yaml`` (with the Airflow Variable
``promptops_budgets`` as overrides); ``periods`` says which day, week, calendar month or
rolling window a moment falls in, in a budget's time zone. Import the submodules directly:
this package imports nothing heavy on its own.
"""
