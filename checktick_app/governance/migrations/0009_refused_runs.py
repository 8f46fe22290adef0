"""Refused runs are rows in the history (status "refused", deferred_to the run they deferred to).

The beat constraint leaves refused rows out, so a refused second dispatch of the night can be recorded.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0008_audit_log_moves_to_its_own_app'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='governancerun',
            name='one_beat_run_per_job_and_day',
        ),
        migrations.AddField(
            model_name='governancerun',
            name='deferred_to',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='refusals', to='governance.governancerun'),
        ),
        migrations.AlterField(
            model_name='governancerun',
            name='status',
            field=models.CharField(choices=[('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('abandoned', 'Abandoned (process died)'), ('refused', 'Refused')], default='running', max_length=10),
        ),
        migrations.AddConstraint(
            model_name='governancerun',
            constraint=models.UniqueConstraint(condition=models.Q(('dry_run', False), ('trigger', 'beat'), models.Q(('status', 'refused'), _negated=True)), fields=('job', 'scheduled_for'), name='one_beat_run_per_job_and_day'),
        ),
    ]
