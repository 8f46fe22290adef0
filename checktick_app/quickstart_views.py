"""The pages this service answers outside the admin for people, not machines.

`/` is a short index of the service's addresses (the admin's "View site" leads here, not to a 404).
The links in warning emails point at CheckTick's own survey pages (SITE_URL); when SITE_URL is this
service (the quick start), those paths lead to the survey's page in the admin, where retention is
extended, so every link in an email the quick start writes opens something real.
"""

from django.conf import settings
from django.shortcuts import redirect, render
from django.urls import reverse


def index(request):
    return render(request, "checktick/index.html", {"site_url": settings.SITE_URL})


def survey_page(request, survey_id):
    """/surveys/<id>/retention/ and /export/ from a warning email: the survey in the admin (login first)."""
    return redirect(reverse("admin:surveys_survey_change", args=[survey_id]))
