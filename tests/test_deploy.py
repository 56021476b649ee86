"""Deployment settings, checked the way an operator starts the app: `manage.py` in a fresh
process with the environment a production host would give it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    unset = ("SECRET_KEY", "DEBUG", "HTTPS", "DJANGO_ALLOW_ASYNC_UNSAFE")  # the browser tests set the last
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update(VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="searchsite.settings", **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_the_deploy_check_without_a_warning(tmp_path):
    done = _manage(
        tmp_path,
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        HTTPS="1",
        ALLOWED_HOSTS="search.example.com",
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_public_or_short_key_with_debug_off_refuses_to_start(tmp_path):
    for key in ("insecure-local-key-set-SECRET_KEY-in-production", "django-insecure-" + "x" * 50, "short"):
        done = _manage(tmp_path, "check", DEBUG="0", SECRET_KEY=key)
        assert done.returncode != 0
        assert "SECRET_KEY is a known or short key and DEBUG is off" in done.stderr


def test_without_a_key_each_machine_makes_its_own_once_and_keeps_it_private(tmp_path):
    show = ("shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY)")
    first, second = _manage(tmp_path, *show), _manage(tmp_path, *show)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert len(key) >= 50 and key == second.stdout.strip()
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    other = tmp_path / "other"
    assert _manage(other, *show).stdout.strip() != key
