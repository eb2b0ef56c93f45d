"""Print the runtime requirements of pyproject.toml, one per line, for the image build.

Used by the Dockerfile so that torch (and anything else a target gets elsewhere, such as
TensorRT from the L4T base on a Jetson) can be left out while every other pin still comes
from the one pyproject.toml. Runs on Python 3.8+ (JetPack 5) with ``tomli`` when
``tomllib`` is missing. Environment markers (``; python_version < '3.10'``) are kept: pip
evaluates them with the image's own Python, which is the one that installs.

    python requirements.py pyproject.toml --extra tensorrt --exclude torch
"""

import argparse
import re
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11 (JetPack 5/6 system Python)
    import tomli as tomllib


def _name(requirement):
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject, extras, exclude):
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit("unknown extra(s): " + ", ".join(unknown))
    wanted = list(project.get("dependencies", []))
    for extra in extras:
        wanted.extend(optional[extra])
    skip = {_name(name) for name in exclude}
    return [req for req in wanted if _name(req) not in skip]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--extra", action="append", default=[], help="optional extra to include")
    parser.add_argument("--exclude", action="append", default=[], help="distribution to leave out")
    args = parser.parse_args(argv)
    for line in requirements(args.pyproject, args.extra, args.exclude):
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
