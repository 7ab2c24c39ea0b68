"""The install ships `third_party` (the Tunix adapter imports outside the repository root)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_tunix_adapter_imports_from_another_directory(tmp_path):
    # A fresh interpreter in a directory that holds no `third_party`, with no PYTHONPATH: only
    # the installed package (editable in .venv, a copy in a wheel) can answer the import.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import third_party.tunix_saar as m, pathlib; "
        "print(pathlib.Path(m.__file__).resolve()); "
        "print(pathlib.Path(m.__file__).with_name('README.md').is_file())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, (
        "third_party.tunix_saar does not import outside the repository root; is it in "
        f"setup.py's packages (and the package reinstalled: pip install -e .)?\n{out.stderr}"
    )
    path, readme = out.stdout.split()
    assert pathlib.Path(path).name == "__init__.py" and readme == "True"
    if REPO in pathlib.Path(path).parents:  # editable install: the checkout's own copy
        assert pathlib.Path(path) == REPO / "third_party" / "tunix_saar" / "__init__.py"
