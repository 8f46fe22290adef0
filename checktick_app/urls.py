from django.contrib import admin
from django.urls import path

from checktick_app import quickstart_views
from checktick_app.governance import views as governance_views

admin.site.site_header = "CheckTick data governance"
admin.site.site_title = "CheckTick governance admin"
admin.site.index_title = "Governance administration"
# No navigation sidebar: it takes ~300 px, and the run history, surveys and ledger tables need them on a
# 1,366 px screen; the breadcrumbs and the index lead everywhere it did.
admin.site.enable_nav_sidebar = False
admin.site.site_url = "/"  # "View site": the service's index of addresses (quickstart_views.index)

urlpatterns = [
    path("admin/", admin.site.urls),
    # For uptime monitors (open, no PII): README.md, "Admin, health and metrics".
    path("health/live/", governance_views.live, name="health-live"),
    path("health/governance/", governance_views.governance, name="health-governance"),
    # For Prometheus (bearer token from METRICS_TOKEN, or loopback only).
    path("metrics", governance_views.metrics, name="metrics"),
    path("", quickstart_views.index, name="index"),
    # The links in warning emails, when SITE_URL is this service (the quick start): the survey in the admin.
    path("surveys/<int:survey_id>/retention/", quickstart_views.survey_page, name="survey-retention"),
    path("surveys/<int:survey_id>/export/", quickstart_views.survey_page, name="survey-export"),
]
