"""Each HTTP handler module says which services it reads (`NEEDS`, typed keys of
calltrackd/http/keys.py) and refuses to be set up without them: a missing service fails
at start, naming the key, not on the first request."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from calltrackd.http import api, auth, keys, recordings, reports, tracking, ui

MODULES = (api, auth, recordings, reports, tracking, ui)


def _with(needs: tuple[web.AppKey[Any], ...]) -> web.Application:
    http = api.build_http_app(body_timeout=1.0)
    for key in needs:
        # setup reads only the settings (tracking's rate limiter); the rest is stored
        http[key] = _settings if key is keys.SETTINGS else object()
    return http


def _settings() -> Any:
    from calltrackd.config import Settings

    return Settings()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_a_handler_module_sets_up_with_exactly_the_keys_it_declares(module: ModuleType) -> None:
    http = _with(module.NEEDS)
    module.setup(http)
    assert len(http.router.routes()) > 0


@pytest.mark.parametrize("module", [m for m in MODULES if m.NEEDS],
                         ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_a_missing_service_is_named_at_setup(module: ModuleType) -> None:
    missing = module.NEEDS[-1]
    http = _with(module.NEEDS[:-1])
    with pytest.raises(RuntimeError) as refused:
        module.setup(http)
    assert repr(missing) in str(refused.value) and module.__name__ in str(refused.value)


def test_no_handler_module_reads_the_whole_daemon() -> None:
    for module in MODULES:
        source = Path(module.__file__ or "").read_text()
        assert "calltrackd.app" not in source and "from ..app" not in source, module
