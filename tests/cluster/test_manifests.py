"""Offline checks of cluster/: the Ray launcher config, the KubeRay and Kubernetes manifests.

    .venv/bin/pytest tests/cluster -q

Schemas come from installed packages only, nothing is fetched: the Ray wheel's
ray/autoscaler/ray-schema.json (plus Ray's own config checks) and the Kubernetes schemas
bundled in kubernetes-validate (K8S_VERSION, strict: unknown fields fail). KubeRay ships no
offline schema, so Ray CRs are checked field by field, their pod templates against the
Kubernetes PodTemplate schema, and their group specs through Ray's KubeRay autoscaler.
"""

import copy
import functools
import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "ray-cluster.aws.yaml"
K8S_VERSION = "1.37.0"  # the newest schema set kubernetes-validate 1.37 bundles
RAY_API = "ray.io/v1"
GPU = "nvidia.com/gpu"


def load_docs(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@functools.cache
def kuberay_objects():  # parsed once; tests deep-copy before changing anything
    return tuple((path, doc) for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_docs(path))


def objects(kind):
    return [doc for _, doc in kuberay_objects() if doc["kind"] == kind]


def only(kind):
    (doc,) = objects(kind)
    return doc


def job_specs():
    """(name, RayJob spec) for every RayJob and RayCronJob job template."""
    specs = [(job["metadata"]["name"], job["spec"]) for job in objects("RayJob")]
    specs += [(cron["metadata"]["name"], cron["spec"]["jobTemplate"]) for cron in objects("RayCronJob")]
    return specs


def cluster_specs():
    """(name, RayCluster spec) for the RayCluster and the cluster of every job spec."""
    specs = [(c["metadata"]["name"], c["spec"]) for c in objects("RayCluster")]
    return specs + [(name, spec["rayClusterSpec"]) for name, spec in job_specs()]


def pod_templates(cluster_spec):
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [group["template"] for group in groups]


def cronjob_container():
    return only("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def cronjob_submit():
    """The CronJob's `ray job submit` command: (options before `--`, entrypoint after it)."""
    script = cronjob_container()["args"][0].replace("\\\n", " ")
    (line,) = [line for line in script.splitlines() if "ray job submit" in line]
    tokens = shlex.split(line)
    assert tokens[:4] == ["exec", "ray", "job", "submit"], line
    split = tokens.index("--")
    return tokens[4:split], tokens[split + 1 :]


def option(tokens, flag):
    return tokens[tokens.index(flag) + 1] if flag in tokens else None


def without(tokens, flag):
    """``tokens`` less ``flag`` and its value."""
    i = tokens.index(flag) if flag in tokens else len(tokens)
    return tokens[:i] + tokens[i + 2:]


def entrypoints():
    """(where, argv) of every command that runs a genscan job."""
    found = [(name, shlex.split(spec["entrypoint"])) for name, spec in job_specs()]
    return found + [("cronjob.scan.yaml", cronjob_submit()[1])]


def gpu_workers(argv):
    """GPUs a job command asks for: one per training worker or scoring actor."""
    if "--use-gpu" not in argv:
        return 0
    return int(option(argv, "--num-workers") or option(argv, "--concurrency") or 1)


def gpu_capacity(cluster_spec):
    return sum(
        group["maxReplicas"]
        * group.get("numOfHosts", 1)
        * int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get(GPU, 0))
        for group in cluster_spec["workerGroupSpecs"]
    )


@pytest.fixture(scope="module")
def ray_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(dep) for dep in project["dependencies"] if Requirement(dep).name == "ray"]
    (spec,) = req.specifier
    assert spec.operator == "==", f"pyproject.toml must pin Ray exactly, not {req}"
    return spec.version


@pytest.fixture(scope="module")
def launcher():
    return yaml.safe_load(LAUNCHER.read_text())


# --- every file -----------------------------------------------------------------------


def test_expected_files_exist():
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*") if p.is_file()}
    expected = {
        "ray-cluster.aws.yaml",
        "README.md",
        "kuberay/raycluster.yaml",
        "kuberay/ray-job.train.yaml",
        "kuberay/ray-job.scan.yaml",
        "kuberay/cronjob.scan.yaml",
        "kuberay/ray-cron-job.scan.yaml",
    }
    assert expected <= names, expected - names


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.y*ml")), ids=lambda p: p.name)
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs), path


# --- Ray cluster launcher ---------------------------------------------------------------


def test_launcher_validates_with_ray_schema(launcher):
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(launcher)  # the file as written
    validate_config(prepare_config(copy.deepcopy(launcher)))  # what `ray up` checks


def test_ray_schema_rejects_a_misspelt_field(launcher):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    bad = {**launcher, "idle_timeout_minute": 5}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_launcher_node_types(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    workers = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no tasks may be scheduled on the head"
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for t in workers if not t["resources"].get("GPU") and t["resources"].get("CPU", 0) > 0]
    assert gpu and cpu, "needs a GPU worker type and a CPU-only worker type"
    assert all(t.get("min_workers", 0) == 0 for t in workers), "workers must scale from zero"
    for t in types.values():  # S3 through instance profiles, never keys
        assert "IamInstanceProfile" in t["node_config"], t["node_config"]["InstanceType"]
    assert launcher["idle_timeout_minutes"] > 0
    assert "." in launcher["file_mounts"].values(), "the repository must be mounted"
    assert any("pip install" in cmd and "genscan" in cmd for cmd in launcher["setup_commands"])
    gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu)
    needed = max(gpu_workers(argv) for _, argv in entrypoints())
    assert gpus >= needed, f"{gpus} GPUs cannot host {needed} GPU workers"


# --- Kubernetes builtin objects ----------------------------------------------------------


def builtin_objects():
    return [(path, doc) for path, doc in kuberay_objects() if doc["apiVersion"] != RAY_API]


@pytest.mark.parametrize(
    "path,doc", builtin_objects(), ids=lambda x: x.name if isinstance(x, Path) else x.get("kind")
)
def test_builtin_objects_validate(path, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_schema_rejects_a_misspelt_field():
    bad = copy.deepcopy(only("CronJob"))
    bad["spec"]["concurrencyPolicyy"] = bad["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# --- KubeRay custom resources ------------------------------------------------------------


def test_ray_resources_have_required_fields():
    kinds = [doc["kind"] for _, doc in kuberay_objects() if doc["apiVersion"] == RAY_API]
    assert sorted(kinds) == ["RayCluster", "RayCronJob", "RayJob", "RayJob"]
    for _, doc in kuberay_objects():
        if doc["apiVersion"].startswith("ray.io"):
            assert doc["apiVersion"] == RAY_API and doc["metadata"]["name"]
    for name, spec in cluster_specs():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", f"{name}: tasks on the head"
        groups = spec["workerGroupSpecs"]
        assert len({g["groupName"] for g in groups}) == len(groups) == 2, name
        for group in [head, *groups]:
            assert isinstance(group["rayStartParams"], dict), name
            assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name
            (container, *_) = group["template"]["spec"]["containers"]
            res = container["resources"]
            assert {"cpu", "memory"} <= res["requests"].keys() & res["limits"].keys(), name
        for group in groups:
            assert 0 <= group["minReplicas"] <= group["maxReplicas"], name
        assert spec["enableInTreeAutoscaling"] is True, name
        assert gpu_capacity(spec) >= 1, f"{name}: no GPU worker group"


def test_ray_pods_use_the_irsa_service_account():
    (account,) = [doc for _, doc in kuberay_objects() if doc["kind"] == "ServiceAccount"
                  and "eks.amazonaws.com/role-arn" in doc["metadata"].get("annotations", {})]
    for name, spec in cluster_specs():
        for template in pod_templates(spec):
            assert template["spec"]["serviceAccountName"] == account["metadata"]["name"], name


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_ray_pod_templates_validate(name, spec):
    for template in pod_templates(spec):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_ray_autoscaler_reads_cluster_spec(name, spec):
    # Ray's KubeRay autoscaler turns the CR into a launcher config and validates it.
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = {"metadata": {"name": name, "namespace": "genscan"}, "spec": copy.deepcopy(spec)}
    types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]
    resources = [t["resources"] for t in types.values()]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert any(r.get("GPU", 0) >= 1 for r in resources), "a GPU group"
    assert any(r["CPU"] > 0 and not r.get("GPU") for r in resources), "a CPU-only group"


@pytest.mark.parametrize("name,spec", job_specs(), ids=[n for n, _ in job_specs()])
def test_jobs_clean_up_and_have_deadlines(name, spec):
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 0
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode"}


def test_ray_cron_job_cannot_overlap():
    # RayCronJob has no concurrencyPolicy: the deadline must end a run before the next.
    cron = only("RayCronJob")["spec"]
    minute, hour, *days = cron["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and days == ["*", "*", "*"], "expected a daily schedule"
    assert cron["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600


# --- entrypoints ---------------------------------------------------------------------------


def test_entrypoints_are_the_local_commands():
    for where, argv in entrypoints():
        assert argv[:2] == ["python", "-m"] and argv[2] in {"jobs.train", "jobs.scan"}, where
        if argv[2] == "jobs.scan":
            assert option(argv, "--mode") == "incremental", where
    # the same scan everywhere; the CronJob alone names its scan id after its hourly slot
    scans = {tuple(without(argv, "--scan-id")) for _, argv in entrypoints() if argv[2] == "jobs.scan"}
    assert len(scans) == 1, f"the scan manifests run different scans: {scans}"
    assert any(argv[2] == "jobs.train" for _, argv in entrypoints())


def test_clusters_have_the_gpus_the_commands_ask_for():
    # Ray waits forever for GPU actors or Train workers the cluster can never place.
    runs = [(name, shlex.split(spec["entrypoint"]), spec["rayClusterSpec"]) for name, spec in job_specs()]
    runs.append(("cronjob.scan.yaml", cronjob_submit()[1], only("RayCluster")["spec"]))
    assert any(gpu_workers(argv) for _, argv, _ in runs)
    for where, argv, spec in runs:
        needed, capacity = gpu_workers(argv), gpu_capacity(spec)
        assert capacity >= needed, f"{where}: asks for {needed} GPU workers, the cluster has {capacity} GPUs"


@pytest.mark.parametrize("job", ["train", "scan"])
def test_entrypoints_parse_with_the_job_parsers(job):
    try:
        module = importlib.import_module(f"jobs.{job}")
    except ModuleNotFoundError as error:
        if error.name != f"jobs.{job}":
            raise
        pytest.skip(f"jobs/{job}.py does not exist yet")
    if not hasattr(module, "get_args_parser"):
        pytest.skip(f"jobs/{job}.py has no get_args_parser() yet")
    argvs = [argv for _, argv in entrypoints() if argv[2] == f"jobs.{job}"]
    assert argvs
    for argv in argvs:
        try:
            args = module.get_args_parser().parse_args(argv[3:])
        except SystemExit:
            pytest.fail(f"jobs.{job} rejects {shlex.join(argv[3:])}")
        if job == "scan":
            assert args.mode == "incremental"


# --- versions and secrets --------------------------------------------------------------------


def image_refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"image", "head_image", "worker_image"} and isinstance(value, str):
                yield value
            else:
                yield from image_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from image_refs(item)


def test_ray_versions_match_pyproject(ray_pin):
    images = [ref for path in CLUSTER.rglob("*.yaml") for doc in load_docs(path) for ref in image_refs(doc)]
    images += re.findall(r"^FROM\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE)
    assert len(images) >= 10
    for ref in images:
        repo, _, tag = ref.rpartition(":")
        assert repo and "/" not in tag, f"{ref} has no tag"
        if repo.startswith("rayproject/ray"):
            assert re.fullmatch(rf"{re.escape(ray_pin)}(-[\w.]+)*", tag), f"{ref} is not Ray {ray_pin}"
        else:  # our images carry the Ray version in the tag: <version>-ray<X>-<variant>
            assert re.search(rf"(^|-)ray{re.escape(ray_pin)}(-|$)", tag), f"{ref} is not on Ray {ray_pin}"
    versions = [spec.get("rayVersion") for _, spec in cluster_specs()]
    assert versions == [ray_pin] * len(versions), versions
    texts = "\n".join(p.read_text() for p in CLUSTER.rglob("*") if p.is_file())
    for tag in re.findall(r"rayproject/ray(?:-ml)?:([\w.\-]+)", texts):  # README and comments too
        assert tag.startswith(f"{ray_pin}-") or tag == ray_pin, tag
    for version in re.findall(r"\bray(?:\[[^\]]*\])?==([\w.]+)", texts):
        assert version == ray_pin, version


SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)


def secret_findings(text, docs=(), prose=False):
    found = re.findall(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", text)
    if not prose:  # instance profiles and IRSA only: these names have no business in config
        found += re.findall(r"aws_secret_access_key|aws_access_key_id|aws_session_token", text, re.IGNORECASE)

    def walk(node):
        if isinstance(node, dict):
            if SECRET_NAME.search(str(node.get("name", ""))) and "value" in node:
                found.append(f"env {node['name']} has a literal value")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for doc in docs:
        walk(doc)
    return found


def test_no_secrets_in_cluster_files():
    for path in (p for p in CLUSTER.rglob("*") if p.is_file()):
        docs = load_docs(path) if path.suffix == ".yaml" else ()
        assert secret_findings(path.read_text(), docs, prose=path.suffix == ".md") == [], path


@pytest.mark.parametrize(
    "text",
    [
        "env:\n- name: AWS_SECRET_ACCESS_KEY\n  value: abc\n",
        "setup_commands: [aws configure set aws_access_key_id x]\n",
        "key: AKIAIOSFODNN7EXAMPLE\n",
        "env:\n- name: RAY_AUTH_TOKEN\n  value: abc\n",
    ],
)
def test_secret_scan_catches(text):
    assert secret_findings(text, [yaml.safe_load(text)])


# --- scheduled scan -------------------------------------------------------------------------------


def test_cronjob_forbids_overlap_and_bounds_its_retries():
    spec = only("CronJob")["spec"]
    job = spec["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert job["backoffLimit"] >= 1
    # Every pod of a slot runs within the slot's hour, so `date -u +%Y%m%d%H` is stable.
    assert spec["startingDeadlineSeconds"] + job["activeDeadlineSeconds"] < 3600
    assert spec["timeZone"] == "Etc/UTC"
    minute, hour, *_ = spec["schedule"].split()
    assert minute.isdigit(), "at most one slot per hour, like the submission id"


def test_cronjob_submission_id_is_one_per_slot():
    script = cronjob_container()["args"][0]
    (fmt,) = re.findall(r'^SUBMISSION_ID="scan-\$\(date -u \+([^)"]+)\)"$', script, re.MULTILINE)
    assert fmt == "%Y%m%d%H", f"the id must name the hourly slot and nothing else: {fmt}"
    assert re.search(r'list_jobs\(\)|job status', script), "must check for an earlier submission"
    options, _ = cronjob_submit()
    assert option(options, "--submission-id") == "$SUBMISSION_ID"
    assert "--no-wait" not in options, "the pod must wait, so a failed scan fails the Job"
    _, argv = cronjob_submit()
    assert option(argv, "--scan-id") == "$SUBMISSION_ID", "a re-run of the slot's scan id resumes it"


def test_cronjob_targets_the_raycluster():
    cluster = only("RayCluster")
    options, _ = cronjob_submit()
    env = {e["name"]: e for e in cronjob_container()["env"]}
    address = option(options, "--address")
    assert address == "$RAY_DASHBOARD_ADDRESS"
    assert env["RAY_DASHBOARD_ADDRESS"]["value"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert env["RAY_AUTH_MODE"]["value"] == cluster["spec"]["authOptions"]["mode"] == "token"
    secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": cluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    pod = only("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (account,) = [a for a in objects("ServiceAccount") if a["metadata"]["name"] == pod["serviceAccountName"]]
    assert account["automountServiceAccountToken"] is False
