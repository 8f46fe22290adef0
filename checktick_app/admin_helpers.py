"""Admin pieces both apps use: read-only history and search by id."""


class ReadOnlyAdminMixin:
    """History: visible with the view permission, never added, changed or deleted through the admin."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def search_by_id(queryset, search_term, field="pk"):
    """An indexed exact match when the admin's search term is a number (an id), otherwise nothing."""
    term = search_term.strip().lstrip("#")
    return queryset.filter(**{field: int(term)}) if term.isdigit() else queryset.none()
