"""Test-suite settings: in CI (CI set in the environment) hypothesis runs derandomised, so a run is
reproducible and a red CI is a real failure; locally it explores new examples on every run."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
