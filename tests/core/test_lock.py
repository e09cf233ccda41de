"""The lock (packaging/constraints.txt) pins every dependency pyproject.toml names, at a version
pyproject admits, so that a fresh set-up installs what the suite last passed with."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
CHOSEN_PER_MACHINE = {"torch", "triton"}    # installed with the machine's own torch build


def _locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "packaging" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("test", "cluster"):         # the extras packaging/setup_env.sh installs
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def test_every_dependency_is_locked_at_an_admitted_version():
    pins = _locked()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name in CHOSEN_PER_MACHINE:
            assert name not in pins, f"{name} is chosen per machine and must stay out of the lock"
            continue
        assert name in pins, f"{req.name} is not in packaging/constraints.txt: run packaging/update_lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {req.name}=={pins[name]}, which pyproject.toml excludes ({req.specifier})")
