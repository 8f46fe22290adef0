# Only the choices change (a new action for beat schedule changes): no SQL, so the append-only triggers stay.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0002_hash_chain_and_database_identity'),
    ]

    operations = [
        migrations.AlterField(
            model_name='auditevent',
            name='action',
            field=models.CharField(choices=[('warning_sent', 'Warning sent'), ('warning_failed', 'Warning failed'), ('soft_deleted', 'Soft deleted'), ('hard_deleted', 'Hard deleted'), ('skipped_for_hold', 'Skipped for legal hold'), ('hold_placed', 'Legal hold placed'), ('hold_removed', 'Legal hold removed'), ('retention_extended', 'Retention extended'), ('deadline_moved', 'Deadline moved on hold release'), ('closed', 'Closed'), ('reopened', 'Reopened'), ('restored', 'Restored'), ('deletion_replayed', 'Hard deletion replayed after a restore'), ('schedule_changed', 'Beat schedule changed')], db_index=True, max_length=32),
        ),
    ]
