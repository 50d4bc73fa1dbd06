"""Reading results: paper figures (a registry tasks add to), summary tables, preset tables."""
