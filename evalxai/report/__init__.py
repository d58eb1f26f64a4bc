"""Reading results: tidy tables, summaries with bootstrap intervals, plots."""
from evalxai.report.tables import TIDY_COLUMNS, bootstrap_ci, summarize

__all__ = ["TIDY_COLUMNS", "bootstrap_ci", "summarize"]
