"""predict.py's logic (see dense/cli/__init__.py for the modules); `run.main` is what the script runs."""
