"""The watchdog's record on a run (resumed_at, resumes), the ledger's claim token, and an index on the
audit log's run id (a run's own audit rows, and an abandoned run's counts, without a table scan).
Database defaults, so rows written outside Django (operators' SQL, the trials' planted rows) need neither."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0004_beat_schedules'),
    ]

    operations = [
        migrations.AddField(
            model_name='deletionwarning',
            name='claim_token',
            field=models.CharField(blank=True, db_default='', max_length=32),
        ),
        migrations.AddField(
            model_name='governancerun',
            name='resumed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='governancerun',
            name='resumes',
            field=models.PositiveIntegerField(db_default=0),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['run_id'], name='audit_by_run'),
        ),
    ]
