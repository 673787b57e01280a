"""Helpers shared by the scripts that compare llmhost with llama.cpp or talk to `llmhost serve`
(bench_vs_llamacpp.py, bench_serve.py, serve_openai_check.py): logging and subprocesses,
finding or building llama.cpp (llama-bench, llama-server), fetching models, building llmhost,
describing the machine and the build, rewriting a marked section of BENCHMARKS.md, the venv
with the official `openai` client, and starting and stopping an HTTP server (llmhost serve or
llama-server) on a free port.

Standard library only: the scripts import it before they may re-run themselves in the venv.
"""

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The official OpenAI Python client, pinned; installed into its own venv on first use.
OPENAI_VERSION = "3.57.0"
OPENAI_VENV = Path(os.environ.get("LLMHOST_OPENAI_VENV",
                                  Path.home() / ".cache" / "llmhost" / "venv-openai"))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def run(cmd, what, env=None, capture=True):
    """Runs cmd; on failure, dies with its stderr tail. Returns stdout."""
    log("$ " + shlex.join(str(c) for c in cmd))
    p = subprocess.run([str(c) for c in cmd], capture_output=capture, text=True, env=env)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or "").strip().splitlines()[-15:])
        die(f"{what} failed (exit {p.returncode}):\n{tail}")
    return p.stdout or ""


# --- llama.cpp ------------------------------------------------------------------------------

def llamacpp_bin():
    """The directory holding llama.cpp's tools: $LLAMACPP_BIN, else what
    ../shared/anchor/build-llamacpp.sh builds (idempotent) and prints."""
    env = os.environ.get("LLAMACPP_BIN")
    if env:
        d = Path(env)
        if not (d / "llama-bench").is_file():
            die(f"LLAMACPP_BIN={env} has no llama-bench; point it at llama.cpp's build/bin")
        return d
    script = ROOT.parent / "shared" / "anchor" / "build-llamacpp.sh"
    if not script.is_file():
        die(f"{script} is missing: set LLAMACPP_BIN to a directory holding llama-bench")
    out = run(["bash", script], "building llama.cpp with " + str(script))
    d = Path(out.strip().splitlines()[-1])
    if not (d / "llama-bench").is_file():
        die(f"{script} printed {d}, which has no llama-bench")
    return d


def cmake_cache(build):
    """CMakeCache.txt of a build directory as {NAME: value}."""
    out = {}
    try:
        for line in (build / "CMakeCache.txt").read_text().splitlines():
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):[A-Z]+=(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2)
    except OSError:
        pass
    return out


def build_llama_server(bindir):
    """Builds llama-server in the llama.cpp build tree whose bin/ is bindir (the anchor build,
    or LLAMACPP_BIN's parent): `cmake --build BUILD --target llama-server`, after turning
    LLAMA_BUILD_SERVER (and LLAMA_BUILD_TOOLS, which gates it) back on if that build's
    configure turned them off. Keeps every other option of the existing configure."""
    build = bindir.parent
    cache = cmake_cache(build)
    if not cache:
        die(f"{bindir} has no llama-server and {build} is no CMake build tree to build it in; "
            f"set LLAMACPP_BIN to a llama.cpp build/bin that has one")
    off = [k for k in ("LLAMA_BUILD_SERVER", "LLAMA_BUILD_TOOLS")
           if cache.get(k, "ON").upper() in ("OFF", "0", "FALSE", "NO")]
    if off:
        src = cache.get("CMAKE_HOME_DIRECTORY") or cache.get("llama.cpp_SOURCE_DIR")
        if not src:
            die(f"{build}/CMakeCache.txt names no source directory")
        run(["cmake", "-S", src, "-B", build] + [f"-D{k}=ON" for k in off],
            "re-configuring llama.cpp with " + ", ".join(f"{k}=ON" for k in off))
    log(f"building llama-server in {build} (a few minutes on first build)")
    run(["cmake", "--build", build, "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
        "cmake --build --target llama-server")
    exe = bindir / "llama-server"
    if not exe.is_file():
        die(f"the llama-server target built, but {exe} is missing")
    return exe


def llama_server_bin(bindir=None):
    """llama.cpp's llama-server beside llama-bench, built first if it is missing."""
    bindir = bindir or llamacpp_bin()
    exe = bindir / "llama-server"
    return exe if exe.is_file() else build_llama_server(bindir)


def llamacpp_version(exe):
    """'0c1e570 (b11312)' from `llama-xxx --version` (it prints to stderr)."""
    try:
        p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
        out = p.stdout + p.stderr
        m = re.search(r"version:\s*(\d+)\s*\(([0-9a-f]+)\)", out)  # version: 7100 (abc1234)
        if m:
            return f"{m.group(2)} (b{m.group(1)})"
        m = re.search(r"build\s+(\d+),\s*commit\s+([0-9a-f]+)", out)  # (build 11312, commit 0c1e570)
        if m:
            return f"{m.group(2)} (b{m.group(1)})"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "?"


# --- models and llmhost ---------------------------------------------------------------------

def model_path(name):
    out = run([sys.executable, ROOT / "scripts" / "fetch_models.py", "--path", name],
              f"fetching model {name}")
    p = Path(out.strip().splitlines()[-1])
    if not p.is_file():
        die(f"fetch_models.py --path {name} printed {p}, which is not a file")
    return p


def resolve_model(spec):
    """A model given as a file path, or as a name of scripts/fetch_models.py (fetched if
    missing)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p.resolve()
    if p.suffix == ".gguf" or "/" in spec:
        die(f"model file {spec} not found")
    return model_path(spec)


def target_dir():
    env = os.environ.get("CARGO_TARGET_DIR")
    return Path(env) if env else ROOT / "target"


def build_llmhost(skip):
    if not skip:
        log("building llmhost (release, every plugin)")
        run(["cargo", "build", "--release", "--workspace"], "cargo build --release --workspace",
            capture=False)
    exe = target_dir() / "release" / "llmhost"
    if not exe.is_file():
        die(f"{exe} is missing: build it with `cargo build --release --workspace` (or drop --no-build)")
    return exe


def find_llmhost():
    """An llmhost binary already built: release first, then debug ($CARGO_TARGET_DIR, then
    target/). None if there is none."""
    dirs = [target_dir()]
    if ROOT / "target" not in dirs:
        dirs.append(ROOT / "target")
    for d in dirs:
        for profile in ("release", "debug"):
            exe = d / profile / "llmhost"
            if exe.is_file():
                return exe
    return None


def llmhost_version(exe):
    try:
        p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
        return (p.stdout.strip() or p.stderr.strip() or "?").splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


# --- machine, build, BENCHMARKS.md ----------------------------------------------------------

def lscpu():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except OSError:
        pass
    flags = set(info.get("Flags", "").split())
    simd = [f for f in ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                        "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8"] if f in flags]
    cpus = info.get("CPU(s)", "?")
    cores = "?"
    try:
        cores = int(info["Core(s) per socket"]) * int(info["Socket(s)"])
    except (KeyError, ValueError):
        pass
    return (f"{info.get('Model name', platform.processor() or '?')}, {cpus} logical CPUs, "
            f"{cores} cores, {info.get('Thread(s) per core', '?')} thread(s) per core, "
            f"L3 {info.get('L3 cache', '?')}; SIMD: {' '.join(simd) or 'none'}")


def git_describe():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+changes" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


def write_md(path, section, begin, end, preamble=""):
    """Replaces what lies between the markers begin and end in path with section; where the
    markers are missing, appends preamble (a heading and text that stay put on later runs),
    then the markers around section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + begin + "\n" + section + end + tail
    else:
        text = text.rstrip("\n") + "\n\n" + preamble + begin + "\n" + section + end + "\n"
    path.write_text(text)
    log(f"wrote the results into {path}")


# --- the openai venv ------------------------------------------------------------------------

def ensure_openai_venv():
    """Makes sure this script runs in the venv holding openai==OPENAI_VERSION (by default
    ~/.cache/llmhost/venv-openai; LLMHOST_OPENAI_VENV moves it): creates it on first use, then
    re-runs the calling script inside it with the same arguments. Returns only when already
    inside."""
    try:
        if Path(sys.prefix).resolve() == OPENAI_VENV.resolve():
            return
    except OSError:
        pass
    py = OPENAI_VENV / "bin" / "python"
    stamp = OPENAI_VENV / f".llmhost-openai-{OPENAI_VERSION}"
    if not (py.is_file() and stamp.is_file()):
        if not py.is_file():
            log(f"creating the venv {OPENAI_VENV} (first run)")
            run([sys.executable, "-m", "venv", OPENAI_VENV], "python3 -m venv")
        run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"openai=={OPENAI_VERSION}"], f"pip install openai=={OPENAI_VERSION}")
        stamp.touch()
    script = os.path.abspath(sys.argv[0])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(py), [str(py), script] + sys.argv[1:])


# --- servers --------------------------------------------------------------------------------

LISTENING = re.compile(r"listening on (https?://[^\s,)]+)")


class Server:
    """One HTTP server process (llmhost serve, llama-server, or any command) started on a free
    port: it must print `listening on http://HOST:PORT` on stdout or stderr (both servers do,
    with --port 0). Its output goes to log_path; stop() ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name, cmd, log_path=None, env=None):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.proc = None
        self.url = None
        self.banner = None
        self.tail = []
        self._found = threading.Event()

    def start(self, timeout=300):
        """Starts the process and waits until it listens and /health answers 200."""
        log(f"starting {self.name}: " + shlex.join(self.cmd))
        logf = open(self.log_path, "w") if self.log_path else None
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, errors="replace",
                                     bufsize=1, env=self.env)

        def reader():
            for line in self.proc.stdout:
                if logf:
                    logf.write(line)
                    logf.flush()
                self.tail = (self.tail + [line.rstrip("\n")])[-40:]
                if self.url is None:
                    m = LISTENING.search(line)
                    if m:
                        self.url = m.group(1).rstrip("/")
                        self.banner = line.strip()
                        self._found.set()
            if logf:
                logf.close()
            self._found.set()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.time() + timeout
        self._found.wait(timeout)
        if self.url is None:
            self.stop()
            die(f"{self.name} printed no 'listening on URL' line"
                + (f" in {timeout} s" if self.proc.poll() is None else
                   f" (exit {self.proc.returncode})") + ":\n" + "\n".join(self.tail[-15:]))
        wait_health(self.url, max(1.0, deadline - time.time()), self)
        log(f"{self.name} is ready at {self.url}")
        return self

    def stop(self):
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_health(url, timeout, server=None):
    """Polls URL/health until it answers 200 (llama-server answers 503 while loading)."""
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        if server is not None and server.proc.poll() is not None:
            die(f"{server.name} exited ({server.proc.returncode}) before it was healthy:\n"
                + "\n".join(server.tail[-15:]))
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    if server is not None:
        server.stop()
    die(f"{url}/health did not answer 200 within {timeout:.0f} s (last: {last})")


def install_signal_exit():
    """SIGTERM and SIGHUP exit through the normal path (so `finally` stops the servers)."""
    import signal

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(s, handler)
        except (ValueError, OSError):
            pass


def int_list(minimum):
    """An argparse type: a comma-separated list of integers, each at least `minimum`."""
    def parse(s):
        try:
            out = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {s!r}")
        if not out or any(x < minimum for x in out):
            raise argparse.ArgumentTypeError(f"expected integers of at least {minimum}, got {s!r}")
        return out
    return parse
