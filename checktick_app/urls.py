from django.contrib import admin
from django.urls import path

from checktick_app.governance import views as governance_views

admin.site.site_header = "CheckTick data governance"
admin.site.site_title = "CheckTick governance admin"
admin.site.index_title = "Governance administration"

urlpatterns = [
    path("admin/", admin.site.urls),
    # For uptime monitors (open, no PII): README.md, "Admin, health and metrics".
    path("health/live/", governance_views.live, name="health-live"),
    path("health/governance/", governance_views.governance, name="health-governance"),
    # For Prometheus (bearer token from METRICS_TOKEN, or loopback only).
    path("metrics", governance_views.metrics, name="metrics"),
]
