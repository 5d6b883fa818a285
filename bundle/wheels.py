"""Offline wheels for the kernel: downloaded with pip for Kaggle's platform, or taken from a folder."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .options import REPO, BuildError, BuildOptions

__all__ = ["DECODER_PACKAGES", "default_wheel_packages", "collect_wheels", "wheel_name_version", "version_tuple"]

log = logging.getLogger(__name__)

DECODER_PACKAGES = ("pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
                    "python-gdcm")

def _pins(requirements: Path) -> dict[str, str]:
    pins = {}
    if requirements.is_file():
        for line in requirements.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def default_wheel_packages() -> tuple[str, ...]:
    """onnxruntime-gpu (no newer than the onnxruntime that validates the models) and the DICOM decoders, pinned
    as in requirements-kernel.txt."""
    import onnxruntime

    pins = _pins(REPO / "requirements-kernel.txt")
    specs = [f"onnxruntime-gpu<={onnxruntime.__version__}"]
    specs += [f"{name}=={pins[_norm(name)]}" if _norm(name) in pins else name for name in DECODER_PACKAGES]
    return tuple(specs)


def _spec_name(spec: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])


def wheel_name_version(path: Path) -> tuple[str, str]:
    parts = path.name.split("-")
    if len(parts) < 5 or not path.name.endswith(".whl"):
        raise BuildError(f"{path} is not a wheel file name (name-version-python-abi-platform.whl)")
    return _norm(parts[0]), parts[1]


def _download_wheels(options: BuildOptions, packages: Sequence[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version",
           options.python_version, "--implementation", "cp", "--dest", str(dest)]
    for platform in options.wheel_platforms:
        cmd += ["--platform", platform]
    cmd += list(packages)
    log.info("downloading wheels: %s", " ".join(cmd))
    proc = subprocess.run(cmd, text=True)
    if proc.returncode != 0:
        raise BuildError(f"pip download failed (exit {proc.returncode}); see the output above. Check the package "
                         f"names/versions in --wheel-packages or bring the wheels with --wheel-dir")


def collect_wheels(options: BuildOptions, staging: Path) -> tuple[Path | None, dict[str, str]]:
    """Fill staging/wheels; return the folder and {top-level name: version} written to its requirements.txt."""
    if not options.download_wheels and options.wheel_dir is None:
        return None, {}
    packages = options.wheel_packages or default_wheel_packages()
    wheels = staging / "wheels"
    wheels.mkdir(parents=True)
    if options.wheel_dir is not None:
        found = sorted(Path(options.wheel_dir).glob("*.whl"))
        if not found:
            raise BuildError(f"--wheel-dir {options.wheel_dir} holds no .whl files")
        for path in found:
            shutil.copy2(path, wheels / path.name)
    if options.download_wheels:
        _download_wheels(options, packages, wheels)
    available = {}
    for path in wheels.glob("*.whl"):
        name, version = wheel_name_version(path)
        available[name] = version
    top = {}
    for spec in packages:
        name = _spec_name(spec)
        if name in available:
            top[name] = available[name]
        else:
            log.warning("no wheel for %s in the bundle: the kernel relies on Kaggle's image for it", spec)
    if not top:
        raise BuildError(f"none of {list(packages)} has a wheel in the bundle; nothing for the kernel to install")
    lines = [f"{name}=={version}" for name, version in sorted(top.items())]
    (wheels / "requirements.txt").write_text("\n".join(lines) + "\n")
    return wheels, top



def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as '1.32.0' or '1.20.0.dev1'."""
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])
