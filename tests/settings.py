"""The project's settings for the test session, with a SECRET_KEY of the tests' own.

Outside DEBUG the project refuses to start without a real SECRET_KEY (settings.py); the tests run as
production does (DEBUG off), so they bring one. Set in the environment, so the processes the tests
start (commands, workers, beat) inherit it too.
"""

import importlib
import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-7Qf2mZr9Lx4Vb8Nc1Hd6Jp3Wt5Ys0Ke")
# The tests move this process's clock to the nights they test (time_machine), which the database server's
# clock cannot follow: runs read the host's clock here. tests/domain/test_one_clock_and_one_job.py puts
# the database's back and checks it.
os.environ.setdefault("CHECKTICK_CLOCK", "host")

globals().update({name: value for name, value in vars(importlib.import_module("checktick_app.settings")).items()
                  if name.isupper()})
