"""The admin must look right under gunicorn in compose/Kubernetes, where no other server serves static files."""

from django.test import Client


def test_the_admin_stylesheet_is_served_by_the_application_itself(settings):
    settings.DEBUG = False
    response = Client().get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert b"body" in b"".join(response.streaming_content)
