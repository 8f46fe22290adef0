"""ops/k8s/: plain manifests that parse, satisfy the schedule's invariants and Kubernetes' schemas."""


import pytest
import yaml

from tests.ops.helpers import ROOT, readme_variables

K8S = ROOT / "ops" / "k8s"
MANIFESTS = sorted(K8S.rglob("*.yaml"))


def documents():
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.relative_to(ROOT), doc))
    return docs


def of_kind(kind):
    return [doc for _, doc in documents() if doc["kind"] == kind]


def pod_spec(doc):
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def containers(doc):
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def by_name(kind, name):
    return next(doc for doc in of_kind(kind) if doc["metadata"]["name"] == name)


def test_every_document_is_a_namespace_less_kubernetes_object():
    docs = documents()
    assert len(docs) >= 12
    for path, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        assert doc["metadata"].get("name"), path
        assert "namespace" not in doc["metadata"], f"{path}: plain YAML, the namespace is the operator's choice"


def test_the_deployments_are_web_two_worker_groups_beat_and_flower():
    names = {doc["metadata"]["name"] for doc in of_kind("Deployment")}
    assert names == {"checktick-web", "checktick-worker-governance", "checktick-worker-email",
                     "checktick-beat", "checktick-flower"}
    assert {doc["metadata"]["name"] for doc in of_kind("Service")} == {"checktick-web", "checktick-flower"}
    assert {doc["kind"] for _, doc in documents()} >= {"Secret", "ConfigMap", "Job", "CronJob"}


def test_workers_consume_their_queue_groups_and_get_longer_than_a_warm_shutdown_to_stop():
    for name, queues in (("checktick-worker-governance", "governance,deletion"), ("checktick-worker-email", "email")):
        doc = by_name("Deployment", name)
        command = pod_spec(doc)["containers"][0]["command"]
        assert command[:4] == ["celery", "-A", "celery_app", "worker"]
        assert command[command.index("-Q") + 1] == queues
        assert pod_spec(doc)["terminationGracePeriodSeconds"] >= 60


def test_exactly_one_beat_recreated_never_rolled():
    beats = [doc for doc in of_kind("Deployment") if "beat" in pod_spec(doc)["containers"][0]["command"]]
    assert len(beats) == 1
    beat = beats[0]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert "django_celery_beat.schedulers:DatabaseScheduler" in pod_spec(beat)["containers"][0]["command"]


def test_cronjobs_run_the_commands_at_two_and_three_utc_never_overlapping():
    jobs = {doc["metadata"]["name"]: doc for doc in of_kind("CronJob")}
    expected = {"checktick-data-governance": ("0 2 * * *", "process_data_governance"),
                "checktick-progress-cleanup": ("0 3 * * *", "cleanup_survey_progress")}
    assert set(jobs) == set(expected)
    for name, (schedule, command) in expected.items():
        spec = jobs[name]["spec"]
        assert spec["schedule"] == schedule and spec["timeZone"] == "Etc/UTC"
        assert spec["concurrencyPolicy"] == "Forbid"
        assert 0 < spec["startingDeadlineSeconds"] <= 6 * 3600
        assert pod_spec(jobs[name])["containers"][0]["command"] == ["python", "manage.py", command]
    # The CronJobs are the alternative to beat, so `kubectl apply -f ops/k8s/` does not deploy both.
    assert all(path.parent.name == "optional" for path, doc in documents() if doc["kind"] == "CronJob")


def test_migrations_run_once_as_the_owner_and_the_others_wait_for_them():
    job = by_name("Job", "checktick-migrate")
    command = " ".join(pod_spec(job)["containers"][0]["command"])
    assert "manage.py migrate" in command and "apply_grants.py" in command
    env_from = pod_spec(job)["containers"][0]["envFrom"]
    assert env_from[-1] == {"secretRef": {"name": "checktick-migrate-secrets"}}, "the owner's DATABASE_URL wins"
    for name in ("checktick-web", "checktick-worker-governance", "checktick-worker-email", "checktick-beat"):
        init = pod_spec(by_name("Deployment", name))["initContainers"]
        assert "migrate --check" in " ".join(init[0]["command"]), name


def test_pods_run_as_non_root_and_the_web_and_flower_are_probed():
    for doc in of_kind("Deployment") + of_kind("Job") + of_kind("CronJob"):
        assert pod_spec(doc)["securityContext"]["runAsNonRoot"] is True
        for container in containers(doc):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    web = pod_spec(by_name("Deployment", "checktick-web"))["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/health/live/"
    flower = pod_spec(by_name("Deployment", "checktick-flower"))["containers"][0]
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert flower["command"][:4] == ["celery", "-A", "celery_app", "flower"]


def test_flower_gets_its_basic_auth_from_the_secret():
    secret = by_name("Secret", "checktick-secrets")
    assert ":" in secret["stringData"]["FLOWER_BASIC_AUTH"]
    flower = pod_spec(by_name("Deployment", "checktick-flower"))["containers"][0]
    assert {"secretRef": {"name": "checktick-secrets"}} in flower["envFrom"]
    assert "FLOWER_ALLOW_UNAUTHENTICATED" not in str(documents())


def test_every_variable_the_manifests_set_is_in_the_readme_table():
    table = readme_variables()
    used = set()
    for _, doc in documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            used |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            for container in containers(doc):
                used |= {item["name"] for item in container.get("env", [])}
    assert used, "the manifests configure the application"
    assert used - table == set(), "variables set in ops/k8s/ but missing from README.md's configuration table"


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    """Schema-aware and strict (unknown fields are errors): kubernetes-validate ships the schemas."""
    try:
        import kubernetes_validate
    except ImportError:
        import os
        message = "kubernetes-validate is not installed; `make test-deps` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    for path, doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)
