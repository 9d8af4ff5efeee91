"""Search: spaces, Optuna studies, the search loop, Pareto utilities."""
