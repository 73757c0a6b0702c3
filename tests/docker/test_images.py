"""The CPU images, built from a clean checkout and run as a cluster would run them (marker `container`).

storage-init fetches the digits model and the transformer spec over HTTP (a local server) into
volume folders; predictor-cpu serves the model as uid 1000 with the folder read-only and /tmp as
the only writable mount; the transformer image runs in front of it with the controller's args;
tritonclient (HTTP and gRPC) checks the answers. Each runtime image is also inspected: numeric
non-root USER, `python -m kbundle.<component>` entrypoint, no compiler, no weights, no source
tree, installed distributions equal to its lock.

Containers run with `buildah run --isolation chroot` (no daemon; `podman run` is refused by this
sandbox's setrlimit policy). buildah run has no read-only root option: the test checks that uid
1000 cannot write outside /tmp instead.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from procs import free_port, wait_http

from kbundle import samples

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import lockcheck  # noqa: E402

# The first test pays for the builds (minutes on a cold cache): a longer limit than the suite's 300 s.
pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

VERSION = "0.1.0"
COMPONENTS = {
    "predictor-cpu": "predictors",
    "transformer": "transformers",
    "storage-init": "storage_init",
}
WEIGHTS = ("*.onnx", "*.plan", "*.engine", "*.pt", "*.pt2", "*.safetensors")
BUILD_TIMEOUT_S = 1500


def _why_no_builder() -> str | None:
    if shutil.which("buildah") is None:
        return "buildah is not installed (bash scripts/system-deps.sh installs it as root)"
    if os.geteuid() != 0:
        return "buildah run --isolation chroot needs root here"
    probe = subprocess.run(["buildah", "info"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"buildah cannot run here: {probe.stderr.decode(errors='replace')[-300:]}"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (no registry here: the base is made offline)"
    return None


def tag(name: str) -> str:
    return f"ghcr.io/kbundle/{name}:{VERSION}"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    why = _why_no_builder()
    if why:
        pytest.skip(why)
    checkout = tmp_path_factory.mktemp("clean") / "kbundle"
    subprocess.run(["git", "clone", "-q", str(REPO), str(checkout)], check=True, timeout=120)
    started = time.monotonic()
    build = subprocess.run(
        ["bash", "scripts/images.sh", "build", "--offline-base", *COMPONENTS],
        cwd=checkout,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, build.stdout + build.stderr[-4000:]
    print(f"\n{build.stdout}built in {time.monotonic() - started:.0f}s")
    for name in COMPONENTS:
        assert tag(name) in build.stdout, build.stdout  # one size line per image
    return {name: tag(name) for name in COMPONENTS}


def image_config(ref: str) -> dict:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref], capture_output=True, check=True, timeout=60
    )
    return json.loads(out.stdout)["OCIv1"]["config"]


@pytest.fixture
def containers() -> Iterator[callable]:
    made: list[str] = []

    def make(ref: str) -> str:
        name = f"kbundle-test-{uuid.uuid4().hex[:10]}"
        subprocess.run(
            ["buildah", "from", "-q", "--name", name, ref],
            check=True,
            timeout=120,
            capture_output=True,
        )
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60)


def run_cmd(ctr: str, argv: list[str], volumes: tuple[str, ...] = (), user: str = "1000:1000"):
    mounts = [arg for volume in volumes for arg in ("-v", volume)]
    return ["buildah", "run", "--isolation", "chroot", "--user", user, *mounts, ctr, "--", *argv]


def run(ctr: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(run_cmd(ctr, argv, **kw), capture_output=True, text=True, timeout=300)


def entry(ref: str) -> list[str]:
    return list(image_config(ref)["Entrypoint"])


# ---- each runtime image on its own ------------------------------------------------------------


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_image_runs_as_numeric_non_root_with_a_python_module_entrypoint(images, name):
    config = image_config(images[name])
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["python", "-m", f"kbundle.{COMPONENTS[name]}"]


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_image_has_no_compiler_weights_or_sources(images, containers, name):
    ctr = containers(images[name])
    names = " -o ".join(f"-name '{w}'" for w in WEIGHTS)
    script = (
        "for c in gcc cc g++ c++ clang make; do command -v $c; done; "
        f"find / -xdev \\( {names} \\) -not -path '*-packages/*' 2>/dev/null; "
        "ls -d /build /src /wheels /wheelhouse /home/kbundle/src 2>/dev/null; "
        "find / -xdev -name pyproject.toml -path '*kbundle*' 2>/dev/null; "
        "python -c 'import kbundle; print(\"module:\", kbundle.__file__)'"
    )
    result = run(ctr, ["sh", "-c", script], user="0:0")
    lines = result.stdout.split()
    module = lines[lines.index("module:") + 1]
    assert module.startswith("/usr/local/lib/python3"), module
    assert lines[: lines.index("module:")] == [], f"compilers, weights or sources: {result.stdout}"


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_image_has_exactly_its_lock_installed(images, containers, name):
    ctr = containers(images[name])
    code = (
        "import json, importlib.metadata as m\n"
        "seen = {}\n"
        "for d in m.distributions(): seen.setdefault(d.metadata['Name'], d.version)\n"
        "print(json.dumps(seen))"
    )
    result = run(ctr, ["python", "-c", code])
    assert result.returncode == 0, result.stderr
    have = {lockcheck.normalize(k): v for k, v in json.loads(result.stdout).items()}
    lock = lockcheck.read_lock(REPO / "locks" / f"{name}.txt")
    assert lockcheck.differences(lock, have) == []


# ---- the cluster's flow: storage-init -> predictor <- transformer <- tritonclient ------------


@pytest.fixture(scope="module")
def model_server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """A local HTTP server with the digits model and transformer spec as tar.gz archives."""
    root = tmp_path_factory.mktemp("http")
    built = samples.build_all()
    archives = {}
    for model in ("digits", "digits-transformer"):
        path = root / f"{model}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for file in sorted((built / model / "v1").iterdir()):
                tar.add(file, arcname=file.name)
        archives[model] = path.name
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", archives
    finally:
        server.shutdown()


def volume(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir(mode=0o755)
    os.chown(path, 1000, 1000)  # KServe's emptyDir is writable by the pod's user
    return path


def storage_init(images, containers, url: str, dest: Path) -> None:
    ctr = containers(images["storage-init"])
    result = run(
        ctr, [*entry(images["storage-init"]), url, "/mnt/models"], volumes=(f"{dest}:/mnt/models",)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(dest.glob(".kbundle-staging*")), "staging left behind"


class Served:
    def __init__(self, proc: subprocess.Popen, log: Path, http_port: int, grpc_port: int):
        self.proc, self.log, self.http_port, self.grpc_port = proc, log, http_port, grpc_port

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve(ctr: str, argv: list[str], volumes: tuple[str, ...], log: Path, ready: str) -> Served:
    http_port, grpc_port = free_port(), free_port()
    argv = [*argv, "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            run_cmd(ctr, argv, volumes=volumes), stdout=out, stderr=subprocess.STDOUT
        )
    served = Served(proc, log, http_port, grpc_port)
    try:
        wait_http(f"http://127.0.0.1:{http_port}{ready}", proc, log, timeout=180)
    except Exception:
        served.stop()
        raise
    return served


def transformer_args() -> list[str]:
    """The transformer's args in inferenceservices/digits.yaml, as the controller passes them."""
    doc = yaml.safe_load((REPO / "inferenceservices" / "digits.yaml").read_text())
    return [str(a) for a in doc["spec"]["transformer"]["containers"][0]["args"]]


def png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    pixels = np.clip(np.rint(image * 255.0 / 16.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_storage_init_predictor_and_transformer_serve_digits_as_in_a_pod(
    images, containers, model_server, tmp_path
):
    base, archives = model_server
    models, spec = volume(tmp_path, "models"), volume(tmp_path, "transformer-spec")
    storage_init(images, containers, f"{base}/{archives['digits']}", models)
    storage_init(images, containers, f"{base}/{archives['digits-transformer']}", spec)
    assert (models / "model.onnx").is_file() and (models / "model.onnx").stat().st_uid == 1000
    tmp_dirs = [volume(tmp_path, f"tmp-{i}") for i in (1, 2)]
    for path in tmp_dirs:
        path.chmod(0o1777)
    predictor_ctr = containers(images["predictor-cpu"])
    # As with readOnlyRootFilesystem: HOME (the image's only uid-1000 folder) read-only too.
    home = volume(tmp_path, "home")
    ro = (f"{models}:/mnt/models:ro", f"{tmp_dirs[0]}:/tmp", f"{home}:/home/kbundle:ro")
    writes = run(
        predictor_ctr,
        [
            "sh",
            "-c",
            "for p in /mnt/models /usr /home/kbundle /; do touch $p/x; done; touch /tmp/ok",
        ],
        volumes=ro,
    )
    refused = writes.stderr.count("Permission denied") + writes.stderr.count("Read-only")
    assert refused == 4, writes.stderr
    assert (tmp_dirs[0] / "ok").exists() and not (models / "x").exists()
    predictor = serve(
        predictor_ctr,
        [*entry(images["predictor-cpu"]), "--model_name", "digits", "--model_dir", "/mnt/models"],
        ro,
        tmp_path / "predictor.log",
        "/v2/models/digits/ready",
    )
    try:
        args = transformer_args()
        host = args.index("--predictor_host") + 1
        args[host] = f"127.0.0.1:{predictor.http_port}"
        transformer = serve(
            containers(images["transformer"]),
            [*entry(images["transformer"]), *args],
            (f"{spec}:/mnt/models:ro", f"{tmp_dirs[1]}:/tmp", f"{home}:/home/kbundle:ro"),
            tmp_path / "transformer.log",
            "/v2/models/digits/ready",
        )
        try:
            _check_answers(predictor, transformer)
        finally:
            transformer.stop()
    finally:
        predictor.stop()


def _check_answers(predictor: Served, transformer: Served) -> None:
    _, test = samples.digits_split()
    images, labels = test.images[:32], test.labels[:32]
    rows = images.reshape(len(images), 64).astype(np.float32)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{predictor.grpc_port}")
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    direct = grpc.infer("digits", [tensor]).as_numpy("label").reshape(-1)
    assert np.mean(direct == labels) >= 0.8
    pngs = np.empty(len(images), dtype=object)
    pngs[:] = [png(image) for image in images]
    http = httpclient.InferenceServerClient(f"127.0.0.1:{transformer.http_port}")
    tensor = httpclient.InferInput("image", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(pngs, binary_data=True)
    top = http.infer("digits", [tensor]).as_numpy("labels")[:, 0]
    assert [t.decode() for t in top] == [str(v) for v in direct]
    grpc_t = grpcclient.InferenceServerClient(f"127.0.0.1:{transformer.grpc_port}")
    tensor = grpcclient.InferInput("image", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(pngs)
    top = grpc_t.infer("digits", [tensor]).as_numpy("labels")[:, 0]
    assert [t.decode() for t in top] == [str(v) for v in direct]
