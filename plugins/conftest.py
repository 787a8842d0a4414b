"""Fixtures for the plugin distributions' tests (collected when pytest runs from the checkout):
the core's one-thread and plugin-environment fixtures."""

from draft_core.testing.fixtures import one_thread, plugin_env  # noqa: F401  (autouse fixtures)
