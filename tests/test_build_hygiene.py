"""Build hygiene: hash-locked dependencies that the install commands use, and a lean, non-root container image.

The locks are read as pip reads them (one requirement per logical line, continuation backslashes joined); nothing is
installed or downloaded here.
"""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import PROJECT_ROOT

RUNTIME_LOCK = PROJECT_ROOT / "requirements.txt"
DEV_LOCK = PROJECT_ROOT / "requirements-dev.txt"
RAY_LOCK = PROJECT_ROOT / "requirements-ray.txt"
TEST_TOOLS = {"pytest", "pytest-timeout", "playwright"}
COMPROMISED = {"litellm": {Version("1.82.7"), Version("1.82.8")}}


def logical_lines(path) -> list[str]:
    """The requirement lines of a pip requirements file, comments dropped and continuations joined."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = (ln.split(" #", 1)[0].strip() for ln in text.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def locked(path) -> dict[str, tuple[Version, list[str]]]:
    """``{canonical name: (pinned version, sha256 hashes)}``; fails on any line that is not an exact hashed pin."""
    out: dict[str, tuple[Version, list[str]]] = {}
    for line in logical_lines(path):
        assert not line.startswith("-"), f"{path.name}: option line {line!r} in a lock"
        spec, *hashes = re.split(r"\s+--hash=", line)
        req = Requirement(spec)
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"{path.name}: {spec!r} is not an exact pin"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (
            f"{path.name}: {req.name} has no sha256 hash")
        out[canonicalize_name(req.name)] = (Version(pins[0].version), hashes)
    return out


def top_level(path) -> list[Requirement]:
    reqs = []
    for line in logical_lines(path):
        if line.startswith("-"):
            continue
        reqs.append(Requirement(line))
    return reqs


def test_both_locks_pin_every_package_to_one_version_with_hashes():
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    assert len(runtime) > 50 and "torch" in runtime and "litellm" in runtime
    for name, bad in COMPROMISED.items():
        assert runtime[name][0] not in bad, f"{name} {runtime[name][0]} is a compromised release"


def test_runtime_lock_has_no_test_tools_and_dev_lock_keeps_runtime_versions():
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    assert not TEST_TOOLS & runtime.keys(), "test tools belong in requirements-dev.txt only"
    assert "ray" not in runtime, "Ray is the optional extra of requirements-ray.txt"
    assert TEST_TOOLS | {"ray"} <= dev.keys()
    for name, (version, _) in runtime.items():
        assert name in dev, f"{name} is in the runtime lock but not in the dev lock"
        assert dev[name][0] == version, f"{name}: runtime lock {version}, dev lock {dev[name][0]}"


def test_ray_lock_is_the_runtime_lock_plus_ray_at_the_dev_lock_versions():
    runtime, ray, dev = locked(RUNTIME_LOCK), locked(RAY_LOCK), locked(DEV_LOCK)
    assert "ray" in ray and not TEST_TOOLS & ray.keys()
    for name, (version, _) in ray.items():
        if name in runtime:
            assert runtime[name][0] == version, f"{name}: runtime lock {runtime[name][0]}, Ray lock {version}"
        assert dev.get(name, (None,))[0] == version, f"{name}: Ray lock {version}, dev lock {dev.get(name)}"


@pytest.mark.parametrize("source, lock", [("requirements.in", RUNTIME_LOCK), ("requirements-dev.in", DEV_LOCK),
                                          ("requirements-ray.in", RAY_LOCK)])
def test_every_declared_range_is_satisfied_by_its_lock(source, lock):
    pins = locked(lock)
    for req in top_level(PROJECT_ROOT / source):
        name = canonicalize_name(req.name)
        assert name in pins, f"{source} asks for {req.name}, which {lock.name} does not pin (re-lock)"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True) or (
            version.local and req.specifier.contains(Version(version.public))), (
            f"{lock.name} pins {req.name} {version}, outside {source}'s {req.specifier} (re-lock)")


def test_never_imported_packages_are_not_dependencies():
    """kaleido (plotly's static export) is never imported: it must not be installed."""
    assert "kaleido" not in {canonicalize_name(r.name) for r in top_level(PROJECT_ROOT / "requirements.in")}
    sources = [p for d in ("phenotyping", "reports", "pages") for p in (PROJECT_ROOT / d).rglob("*.py")]
    assert not [p for p in sources if "kaleido" in p.read_text(encoding="utf-8")]


def test_install_commands_use_the_hashed_locks():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme[readme.index("## Set up"):readme.index("## Run the app")]
    assert "pip install --require-hashes -r requirements-dev.txt" in setup
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"pip install .*--require-hashes -r requirements-dev\.txt", ci)
    assert not re.search(r"pip install[^\n]*-r requirements\.in", ci)


def test_the_test_environment_is_the_locked_one():
    """What this test run imports is what the dev lock pins (CI installs from it; a stray upgrade shows here)."""
    mismatched = []
    for name, (version, _) in locked(DEV_LOCK).items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            mismatched.append(f"{name}: not installed")
            continue
        if installed != version:
            mismatched.append(f"{name}: installed {installed}, locked {version}")
    assert not mismatched, "environment differs from requirements-dev.txt: " + "; ".join(mismatched)


def dockerfile() -> list[str]:
    text = (PROJECT_ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_docker_base_image_is_pinned_to_a_debian_12_release():
    froms = [ln.split()[1] for ln in dockerfile() if ln.upper().startswith("FROM ")]
    assert froms, "Dockerfile has no FROM"
    for image in froms:
        tag = image.split("@", 1)[0].rsplit(":", 1)[-1] if ":" in image else ""
        pinned = "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+-slim-bookworm", tag)
        assert pinned, f"base image {image!r} is not pinned to a patch release (or digest) of Debian 12"


def test_docker_image_runs_as_a_non_root_user_with_a_healthcheck():
    lines = dockerfile()
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "the image must end as a non-root user"
    cmd_at = max(i for i, ln in enumerate(lines) if ln.upper().startswith("CMD "))
    user_at = max(i for i, ln in enumerate(lines) if ln.upper().startswith("USER "))
    assert user_at < cmd_at
    health = [ln for ln in lines if ln.upper().startswith("HEALTHCHECK ")]
    assert health and "/_stcore/health" in health[0]


def test_docker_image_installs_only_the_runtime_lock():
    text = " ".join(dockerfile())
    assert re.search(r"pip install [^&]*--require-hashes[^&]*-r requirements\.txt", text)
    for forbidden in ("requirements-dev", "pytest", "playwright", "chromium", "poppler", "kaleido"):
        assert forbidden not in text, f"Dockerfile installs {forbidden}, a test-only or unused dependency"
    ignored = (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "tests" in ignored and "requirements-dev.txt" in ignored


def test_readme_says_the_app_must_sit_behind_tls():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Serving over TLS"):]
    assert "proxy_pass http://127.0.0.1:8501" in section and "Upgrade" in section and "listen 443 ssl" in section
