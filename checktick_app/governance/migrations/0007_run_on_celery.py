"""Which runs Celery drives (beat, Run now, --async): the watchdog re-sends only what those wait for."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0006_watchdog_schedule'),
    ]

    operations = [
        migrations.AddField(
            model_name='governancerun',
            name='on_celery',
            field=models.BooleanField(db_default=False),
        ),
    ]
