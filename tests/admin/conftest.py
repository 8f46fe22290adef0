"""The admin's cast: an operator (the "Governance operators" group), a viewer, a staff user without the
governance permission, and a user who is not staff at all."""

import pytest
from django.contrib.auth.models import Permission

from checktick_app.governance.management.commands.create_governance_operator import operators_group
from tests.factories import UserFactory

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """PBKDF2's deliberate slowness buys nothing in tests (Django's own advice for test settings)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(username, *, staff=True, permissions=(), group=False):
    user = UserFactory(username=username, is_staff=staff)
    user.set_password(PASSWORD)
    user.save()
    if group:
        user.groups.add(operators_group())
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


@pytest.fixture
def operator(db):
    return make_user("operator", group=True)


@pytest.fixture
def viewer(db):
    """May look at the history, the audit and the forecast, but not start runs."""
    return make_user("viewer", permissions=["governance.view_governance"])


@pytest.fixture
def staff_without_permission(db):
    return make_user("plainstaff", permissions=["surveys.view_survey"])


@pytest.fixture
def not_staff(db):
    return make_user("notstaff", staff=False, permissions=["governance.view_governance"])
