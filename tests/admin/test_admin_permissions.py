"""Only staff holding governance.view_governance see the governance admin; running needs run_governance."""

import pytest
from django.contrib.auth import get_user_model

from checktick_app.governance.runs import Job, Trigger, open_run
from tests.admin.conftest import make_user

pytestmark = pytest.mark.django_db

GOVERNANCE_PAGES = [
    "/admin/governance/governancerun/",
    "/admin/audit/auditevent/",
    "/admin/governance/deletionwarning/",
    "/admin/governance/governancerun/forecast/?days=3",
]
START = "/admin/governance/governancerun/start/data_governance/"


@pytest.mark.parametrize("url", GOVERNANCE_PAGES)
def test_staff_without_the_governance_permission_is_refused(client, staff_without_permission, url):
    client.force_login(staff_without_permission)

    assert client.get(url).status_code == 403


def test_staff_without_the_permission_does_not_see_the_governance_app(client, staff_without_permission):
    client.force_login(staff_without_permission)

    index = client.get("/admin/").content.decode()

    assert "Surveys" in index  # the permission they do have
    assert "Data governance" not in index and "Governance runs" not in index
    assert client.get("/admin/governance/").status_code == 404
    assert client.post(START, {"dry_run": "1"}).status_code == 403


@pytest.mark.parametrize("url", GOVERNANCE_PAGES)
def test_a_user_who_is_not_staff_is_sent_to_the_login_page(client, not_staff, url):
    client.force_login(not_staff)

    response = client.get(url)

    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_anonymous_is_sent_to_the_login_page(client):
    response = client.post(START, {"dry_run": "0"})

    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", GOVERNANCE_PAGES)
def test_a_viewer_sees_everything(client, viewer, url):
    client.force_login(viewer)

    assert client.get(url).status_code == 200


def test_a_viewer_gets_no_run_buttons_and_cannot_start_a_run(client, viewer):
    client.force_login(viewer)

    page = client.get("/admin/governance/governancerun/").content.decode()

    assert "Run now" not in page and "Preview (dry run)" not in page
    assert client.post(START, {"dry_run": "1"}).status_code == 403


def test_an_operator_gets_both_buttons_for_both_jobs(client, operator):
    client.force_login(operator)

    page = client.get("/admin/governance/governancerun/").content.decode()

    for job in ("data_governance", "progress_cleanup"):
        assert f'action="/admin/governance/governancerun/start/{job}/"' in page
    assert page.count(">Run now</button>") == 2 and page.count(">Preview (dry run)</button>") == 2
    assert page.count("csrfmiddlewaretoken") >= 4


def test_a_superuser_passes_without_explicit_permissions(client):
    admin = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    client.force_login(admin)

    assert all(client.get(url).status_code == 200 for url in GOVERNANCE_PAGES)
    assert "Run now" in client.get("/admin/governance/governancerun/").content.decode()


def test_start_is_post_only(client, operator):
    client.force_login(operator)

    assert client.get(START).status_code == 405


def test_start_refuses_an_unknown_job(client, operator):
    client.force_login(operator)

    assert client.post("/admin/governance/governancerun/start/everything/", {"dry_run": "0"}).status_code == 403


def test_start_is_csrf_protected(operator):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)

    assert strict.post(START, {"dry_run": "1"}).status_code == 403


@pytest.mark.parametrize("url", ["/admin/audit/auditevent/add/", "/admin/governance/deletionwarning/add/",
                                 "/admin/governance/governancerun/add/"])
def test_evidence_cannot_be_added(client, operator, url):
    client.force_login(operator)

    assert client.get(url).status_code == 403


def test_a_run_cannot_be_changed_or_deleted(client, operator):
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
    client.force_login(operator)

    page = client.get(f"/admin/governance/governancerun/{run.pk}/change/")
    post = client.post(f"/admin/governance/governancerun/{run.pk}/change/", {"status": "succeeded"})
    delete = client.post(f"/admin/governance/governancerun/{run.pk}/delete/", {"post": "yes"})

    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert post.status_code == 403 and delete.status_code == 403
    run.refresh_from_db()
    assert run.status == "running"


def test_the_operators_group_command_makes_existing_users_staff_operators(client):
    from tests.domain.helpers import run_command

    user = make_user("newop", staff=False)

    result = run_command("create_governance_operator", "newop")
    again = run_command("create_governance_operator", "newop")
    missing = run_command("create_governance_operator", "nobody")

    assert result.returncode == 0 and again.returncode == 0
    assert "newop: staff, member of Governance operators" in result.out
    user.refresh_from_db()
    assert user.is_staff and user.has_perm("governance.view_governance") and user.has_perm("governance.run_governance")
    assert not user.has_perm("surveys.view_surveyresponse")
    assert missing.returncode == 2 and "No such user: nobody" in str(missing.error)


def test_beat_schedules_stay_in_the_admin(client, operator):
    client.force_login(operator)

    assert client.get("/admin/django_celery_beat/periodictask/").status_code == 200


def test_run_now_on_a_misconfigured_host_says_what_to_set_and_starts_nothing(client, operator, settings):
    from checktick_app.governance.models import GovernanceRun

    settings.SITE_URL = ""
    client.force_login(operator)

    response = client.post(START, {"dry_run": "0"}, follow=True)

    messages = [str(m) for m in response.context["messages"]]
    assert len(messages) == 1 and messages[0].startswith("Not started: Governance run not started. SITE_URL is not set")
    assert response.redirect_chain[-1][0] == "/admin/governance/governancerun/"
    assert not GovernanceRun.objects.exists()


def test_run_now_refused_while_a_run_is_in_progress_names_it(client, operator):
    from checktick_app.governance.models import GovernanceRun

    running = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.BEAT)
    client.force_login(operator)

    response = client.post("/admin/governance/governancerun/start/progress_cleanup/", {"dry_run": "1"})
    page = client.get(response["Location"])

    assert response["Location"] == f"/admin/governance/governancerun/{running.pk}/change/"
    text = [str(m) for m in page.context["messages"]][0]
    assert text.startswith(f"Not started: run #{running.pk} of progress cleanup (beat schedule, started ")
    assert text.endswith("is still in progress. Please wait for it to finish, then try again.")
    assert GovernanceRun.objects.exclude(status=GovernanceRun.Status.REFUSED).get() == running
    assert GovernanceRun.objects.get(status=GovernanceRun.Status.REFUSED).triggered_by == operator.username
