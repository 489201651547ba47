"""An image of Prometheus from Debian's package, for the compose stack's `prometheus` service offline."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BINARIES = ("prometheus", "promtool")


def _installed_binaries() -> Path | None:
    """/usr/bin where the Debian package is installed on this machine."""
    owner = subprocess.run(["dpkg", "-S", "/usr/bin/prometheus"], capture_output=True, text=True, check=False)
    if owner.returncode == 0 and owner.stdout.startswith("prometheus:"):
        return Path("/usr/bin")
    return None


def _extracted_binaries(cache: Path) -> Path:
    """The package's binaries, downloaded (not installed: no service starts) and unpacked under ``cache``."""
    unpacked = cache / "root" / "usr" / "bin"
    if all((unpacked / name).exists() for name in BINARIES):
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "prometheus"], cwd=cache, check=True, capture_output=True)
    package = max(cache.glob("prometheus_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(package), str(cache / "root")], check=True)
    return unpacked


def build_image(tag: str, base_image: str, cache: Path) -> str:
    """Builds ``tag`` from ``base_image`` with Debian's prometheus and promtool; returns the version line."""
    binaries = _installed_binaries() or _extracted_binaries(cache)
    with tempfile.TemporaryDirectory(prefix="apexrl-prometheus-") as folder:
        context = Path(folder)
        shutil.copy(HERE / "prometheus" / "Dockerfile", context / "Dockerfile")
        for name in BINARIES:
            shutil.copy(binaries / name, context / name)
        subprocess.run(
            ["docker", "build", "--quiet", "--build-arg", f"BASE_IMAGE={base_image}", "--tag", tag, "."],
            cwd=context,
            check=True,
            capture_output=True,
            timeout=300,
        )
    version = subprocess.run(
        [str(binaries / "prometheus"), "--version"], capture_output=True, text=True, check=True
    )
    return version.stdout.splitlines()[0]
