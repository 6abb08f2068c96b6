"""The Curator peer of the ZooKeeper interop tests: found in the cache, or built with Maven.

    python3 tests/zookeeper/curator_peer.py --cache DIR   # builds it if need be; prints its folder

``scripts/install-servers`` runs this, so that a cold build (Maven fetching Curator and its
plugins from Maven Central into ``~/.m2``, about a minute) happens with the server installs
and a failure shows there. The folder is ``DIR/curator-peer-<hash of the sources>``: an
edited peer is built again. It holds ``peer.jar``, ``lib/`` and ``classpath``. Standard
library only: the install script may run it before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "curator"
MAIN_CLASS = "coordination.curator.Peer"
JVM_OPTIONS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]


def digest() -> str:
    """A hash of the peer's sources (the pom and the Java files)."""
    h = hashlib.sha256()
    for path in sorted(p for p in SOURCES.rglob("*") if p.is_file() and p.suffix in {".xml", ".java"}):
        h.update(str(path.relative_to(SOURCES)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def build(cache: Path) -> Path:
    """The folder of the built peer in ``cache``, built first if it is not there."""
    folder = cache / f"curator-peer-{digest()}"
    if (folder / "classpath").is_file():
        return folder
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to build the Curator peer and is not on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "curator-peer.build.log"
    with tempfile.TemporaryDirectory(prefix="coordination-curator-build.") as work:
        shutil.copytree(SOURCES, work, dirs_exist_ok=True)
        with open(log, "wb") as out:
            status = subprocess.run(
                [mvn, "-B", "-q", "package", "-DskipTests"], cwd=work, stdout=out, stderr=subprocess.STDOUT
            ).returncode
        if status != 0:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"mvn package failed (status {status}; log {log}):\n" + "\n".join(tail))
        staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=cache))
        shutil.copy(next(Path(work, "target").glob("curator-peer-*.jar")), staging / "peer.jar")
        shutil.copytree(Path(work, "target", "lib"), staging / "lib")
    (staging / "classpath").write_text(f"{folder / 'peer.jar'}{os.pathsep}{folder / 'lib' / '*'}\n")
    try:
        staging.rename(folder)
    except OSError:  # built meanwhile by another run: keep that one
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def command(folder: Path, java: Path | str = "java") -> list[str]:
    """The command line that runs the peer built in ``folder`` (its arguments follow)."""
    classpath = (folder / "classpath").read_text().strip()
    return [str(java), *JVM_OPTIONS, "-cp", classpath, MAIN_CLASS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="the cache folder of the install script")
    args = parser.parse_args()
    try:
        folder = build(args.cache)
    except RuntimeError as error:
        sys.exit(f"curator_peer: {error}")
    print(folder)


if __name__ == "__main__":
    main()
