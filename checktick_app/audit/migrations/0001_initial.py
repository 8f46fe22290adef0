"""The audit log moves from the governance app into this one, without moving a row.

The table (`governance_auditevent`), its indexes and its append-only triggers stay as they are: only
Django's record of which app owns the model changes (state operations, no SQL). The content type is
renamed too, so permissions already granted on the model follow it.
"""

import django.utils.timezone
from django.db import migrations, models


def rename_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="governance", model="auditevent").update(app_label="audit")


def restore_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="audit", model="auditevent").update(app_label="governance")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("governance", "0007_run_on_celery"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ("action", models.CharField(choices=[
                            ("warning_sent", "Warning sent"), ("warning_failed", "Warning failed"),
                            ("soft_deleted", "Soft deleted"), ("hard_deleted", "Hard deleted"),
                            ("skipped_for_hold", "Skipped for legal hold"), ("hold_placed", "Legal hold placed"),
                            ("hold_removed", "Legal hold removed"), ("retention_extended", "Retention extended"),
                            ("deadline_moved", "Deadline moved on hold release"), ("closed", "Closed"),
                            ("reopened", "Reopened"), ("restored", "Restored"),
                        ], db_index=True, max_length=32)),
                        ("survey_id", models.BigIntegerField(db_index=True, null=True)),
                        ("survey_name", models.CharField(blank=True, max_length=255)),
                        ("actor_id", models.BigIntegerField(help_text="User id; empty for the scheduler.", null=True)),
                        ("actor", models.CharField(blank=True, help_text="Username, or 'system'.", max_length=150)),
                        ("run_id", models.BigIntegerField(null=True)),
                        ("details", models.JSONField(blank=True, default=dict)),
                    ],
                    options={
                        "db_table": "governance_auditevent",
                        "ordering": ["-created_at", "-id"],
                        "indexes": [models.Index(fields=["run_id"], name="audit_by_run")],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(rename_content_type, restore_content_type),
    ]
