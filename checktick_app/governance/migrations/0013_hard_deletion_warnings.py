"""R23: the ledger tells 30/7/1-day warnings, soft-deletion notices and hard-deletion warnings apart by `kind`,
and the once-only key includes it. Existing rows with threshold 0 are soft-deletion notices."""

from django.db import migrations, models


def mark_notices(apps, schema_editor):
    apps.get_model("governance", "DeletionWarning").objects.filter(threshold_days=0).update(kind="notice")


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0012_mail_server_failures'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='deletionwarning',
            name='warning_once_per_survey_date_threshold_recipient',
        ),
        migrations.AddField(
            model_name='deletionwarning',
            name='kind',
            field=models.CharField(choices=[('warning', 'Deletion warning'), ('notice', 'Soft-deletion notice'), ('hard_warning', 'Hard-deletion warning')], db_default='warning', default='warning', max_length=12),
        ),
        migrations.RunPython(mark_notices, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='runitem',
            name='kind',
            field=models.CharField(choices=[('warning', 'Warning email'), ('notice', 'Soft-deletion notice'), ('soft_delete', 'Soft delete'), ('hard_warning', 'Hard-deletion warning'), ('hard_delete', 'Hard delete'), ('held', 'Held (legal hold)'), ('cleanup_batch', 'Cleanup slice')], max_length=20),
        ),
        migrations.AddConstraint(
            model_name='deletionwarning',
            constraint=models.UniqueConstraint(fields=('survey_id', 'deletion_date', 'kind', 'threshold_days', 'recipient_id'), name='warning_once_per_survey_date_kind_recipient'),
        ),
    ]
