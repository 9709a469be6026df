"""Who is asking: DevServer's session user when mounted, the `X-Studio-User` header standalone.

A user name is shown on the page and recorded as a job's owner; it becomes a folder name only through `owner_key`,
which keeps a safe name as it is and turns any other into a hash (names are hostile: `../x`, `con`, emoji).
Teachers (a configured list of names, or whoever the host's own check passes: in DevServer its settings login) see
every job; everybody else sees their own.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import unquote

from flask import request

from .config import StudioConfig
from .replies import StudioRefusal

USER_HEADER = "X-Studio-User"
USER_COOKIE = "lora_studio_user"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_NAME = 80


def _clean(name: Any) -> str | None:
    if not isinstance(name, str):
        return None
    name = name.strip()
    if not name or len(name) > _MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    return name


def current_user(config: StudioConfig) -> str | None:
    """The user of this request, or None when nobody is known (then only /me and /presets answer)."""
    if config.user is not None:
        return _clean(config.user())
    # Links the browser opens by itself (report.html and the images it loads) carry no header: the page's sign-in
    # sets this cookie too (same trust as the header; standalone has no login).
    return _clean(request.headers.get(USER_HEADER) or unquote(request.cookies.get(USER_COOKIE, "")) or None)


def require_user(config: StudioConfig) -> str:
    user = current_user(config)
    if user is None:
        if config.mounted:
            raise StudioRefusal(403, "you are not logged in to DevServer", hint="log in, then reload the page")
        raise StudioRefusal(403, f"no user name given (header {USER_HEADER})",
                            hint=f"enter your name on the page, or send the header {USER_HEADER}: <name> "
                            f"(1-{_MAX_NAME} characters)")
    return user


def is_teacher(config: StudioConfig, user: str | None) -> bool:
    if user is None:
        return False
    return user in config.teachers or (config.teacher is not None and config.teacher() is True)


def owner_key(user: str) -> str:
    """A folder name for `user`: the name itself when it is safe, else `u-<hash>` (stable, never a path)."""
    if _SAFE_KEY.match(user) and user not in (".", ".."):
        return user
    return "u-" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:20]


def may_see(config: StudioConfig, user: str, owner: str | None) -> bool:
    """Own jobs for everyone; every job (also the terminal's, which have no owner) for teachers."""
    return owner == user or is_teacher(config, user)
