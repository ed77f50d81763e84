"""The build copies the workflow (Snakefile, workflow/, the default config.yaml) into the package as
benchmark/_bundle, so that an installed package (`pip install .`, not editable) runs every step and the DAG."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUNDLED = ("Snakefile", "config.yaml", "workflow")  # as benchmark/resources.py lists them


class BuildWithWorkflow(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "benchmark" / "_bundle"
        shutil.rmtree(target, ignore_errors=True)
        for name in BUNDLED:
            source = HERE / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithWorkflow})
