"""Package layout: the library `align` lives in client/, the services in services/.

`services/` is installed as the package `align_services` so that Ray Serve and the
evaluation server import it by a stable name (`align_services.embedding.app:app`).
Everything else is declared in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

# Namespace discovery also lists align/data/... (shipped data folders) as packages, so
# setuptools installs them as package data without warnings.
packages = [
    *find_namespace_packages("client", include=["align*"]),
    "align_services",
    *("align_services." + name for name in find_packages("services")),
]

setup(packages=packages, package_dir={"": "client", "align_services": "services"})
