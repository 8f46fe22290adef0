"""The "Governance operators" group, and staff users in it.

A management command rather than a data migration: Django creates permissions only after all
migrations have run (post_migrate), so a data migration would have to create them itself, and a
group is site configuration an operator may want to re-apply. Running it again is harmless: it
brings the group's permissions back to the list below.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import CommandError
from django.db import transaction

from checktick_app.governance.management.base import EXIT_USAGE, ExactFlagsCommand

GROUP_NAME = "Governance operators"
# app_label.codename: what an operator needs, and no more (no response data, no user admin).
PERMISSIONS = [
    "governance.view_governance",       # run history, audit log, warning ledger, forecast
    "governance.run_governance",        # Run now / Preview buttons
    "surveys.view_survey",              # retention fields read-only; no response answers anywhere
    "surveys.view_organisation",
    "surveys.view_organisationmembership",
    "surveys.view_legalhold",
    "surveys.add_legalhold",            # place a legal hold
    "surveys.change_legalhold",         # remove a legal hold
    "surveys.view_retentionextension",
    "surveys.add_retentionextension",   # extend retention
    "django_celery_beat.view_periodictask",
    "django_celery_beat.change_periodictask",
    "django_celery_beat.view_crontabschedule",
]


def operators_group():
    """The group with exactly PERMISSIONS (created on first use)."""
    wanted = []
    for name in PERMISSIONS:
        app_label, codename = name.split(".")
        try:
            wanted.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        except Permission.DoesNotExist:
            raise CommandError(f"Permission {name} does not exist yet: run `python manage.py migrate` first.",
                               returncode=EXIT_USAGE)
    group, _ = Group.objects.get_or_create(name=GROUP_NAME)
    group.permissions.set(wanted)
    return group


class Command(ExactFlagsCommand):
    help = (f'Create or update the "{GROUP_NAME}" group (governance view and run permissions, survey retention '
            "and legal holds, beat schedules), and make the named existing users staff members of it.")

    def add_arguments(self, parser):
        parser.add_argument("usernames", nargs="*", help="Existing users to make staff and add to the group.")

    def handle(self, *args, **options):
        User = get_user_model()
        names = options["usernames"]
        users = list(User.objects.filter(**{f"{User.USERNAME_FIELD}__in": names}))
        missing = sorted(set(names) - {u.get_username() for u in users})
        if missing:
            raise CommandError(f"No such user: {', '.join(missing)}. Create it first "
                               "(python manage.py createsuperuser, or the admin's Users page).", returncode=EXIT_USAGE)
        with transaction.atomic():
            group = operators_group()
            for user in users:
                if not user.is_staff:
                    user.is_staff = True
                    user.save(update_fields=["is_staff"])
                user.groups.add(group)
        self.stdout.write(f'Group "{GROUP_NAME}" has {len(PERMISSIONS)} permissions.')
        for user in users:
            self.stdout.write(f"  {user.get_username()}: staff, member of {GROUP_NAME}")
