"""Build hook: ship the top-level `conf/` inside the package as `qrl/conf`.

`conf/` stays the one source of qrl's Hydra configs (a checkout and an editable install read it
in place); a wheel or a plain `pip install .` gets a copy under `qrl/conf`, which
`qrl.config.CONF_DIR` finds when no source tree is present (a Ray worker, a cluster node).
Everything else about the build is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "conf"


class BuildWithConfigs(build_py):
    """`build_py` that also copies `conf/**/*.yaml` to `<build>/qrl/conf/`."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads conf/ in the checkout
        if not (SOURCE / "search.yaml").is_file():
            raise RuntimeError(f"{SOURCE} holds no search.yaml: qrl's configs cannot be packaged")
        target = Path(self.build_lib) / "qrl" / "conf"
        shutil.rmtree(target, ignore_errors=True)
        for path in sorted(SOURCE.rglob("*.yaml")):
            dest = target / path.relative_to(SOURCE)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildWithConfigs})
