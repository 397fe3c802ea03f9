"""Benchmarks: ``python -m bench NAME [ARGS]`` runs ``bench/NAME.py``'s ``main()``;
``python -m bench`` runs them all with their defaults; ``python -m bench --list`` lists
them. See bench/README.md for what each measures and the numbers."""
