"""Package layout: the library `align` lives in client/, the services in services/.

`services/` is installed as the package `align_services` so that Ray Serve and the
evaluation server import it by a stable name (`align_services.embedding.app:app`).
Everything else is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

packages = find_packages("client") + ["align_services"]
packages += ["align_services." + name for name in find_packages("services")]

setup(packages=packages, package_dir={"": "client", "align_services": "services"})
