"""Config files: every role's TOML is checked when read, with a precise error."""

from __future__ import annotations

from pathlib import Path

import pytest

from numfed.config import Limits, load_carrier_config, load_gateway_config, load_platform_config
from numfed.errors import InvalidArgument
from numfed.federation import create_federation
from numfed.scenario import PLATFORMS

GATEWAY = """
[gateway]
listen = "127.0.0.1:7000"
pki_dir = "pki"
trust_dir = "trust"
state_dir = "state/gw"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_federation_configs_load(tmp_path: Path) -> None:
    lay = create_federation(tmp_path / "fed", limits={"platform_call_timeout": 2.5})
    gw = load_gateway_config(lay.gateway_config)
    assert tuple(m.id for m in gw.platforms) == PLATFORMS
    assert [m.id for m in gw.carriers] == ["cmcc", "cucc", "ctcc"]
    assert gw.limits.platform_call_timeout == 2.5
    assert gw.database_url == f"sqlite:///{lay.root / 'state/gateway/gateway.db'}"
    assert gw.pki_dir == lay.pki_dir  # relative to the config file
    assert load_carrier_config(lay.carrier_configs["cucc"]).carrier_id == "cucc"
    assert load_platform_config(lay.platform_configs["xiaomi"]).platform_id == "xiaomi"
    # Every member applies the same connection settings (keepalive, connection age).
    assert load_platform_config(lay.platform_configs["xiaomi"]).limits.platform_call_timeout == 2.5


@pytest.mark.parametrize(
    "extra",
    [
        "[limits]\nno_such_limit = 1\n",
        "[limits]\nplatform_call_timeout = -1\n",
        '[[platform]]\nid = "weibo"\nendpoint = "127.0.0.1:1"\n'
        '[[platform]]\nid = "weibo"\nendpoint = "127.0.0.1:2"\n',
        '[[platform]]\nid = "Weibo!"\nendpoint = "127.0.0.1:1"\n',
        '[[platform]]\nid = "weibo"\nendpoint = "nowhere"\n',
        '[[carrier]]\nid = "cmcc\\n"\nendpoint = "127.0.0.1:1"\n',
        # Servers accept pings every half second: a client may not ask for more.
        "[limits]\nkeepalive_time = 0.5\n",
        # A watch must end cleanly before its connection is closed under it.
        "[limits]\nwatch_max_age = 600\nmax_connection_age_grace = 300\n",
        # Platforms refuse batches of more than 500 claims.
        "[limits]\nmax_batch_items = 501\n",
    ],
)
def test_bad_gateway_config_is_refused(tmp_path: Path, extra: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_gateway_config(write(tmp_path, GATEWAY + extra))
    assert e.value.reason == "BAD_CONFIG"


def test_missing_section_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        load_gateway_config(write(tmp_path, "[other]\n"))
    with pytest.raises(InvalidArgument):
        load_gateway_config(write(tmp_path, "not = toml = at all"))
    with pytest.raises(InvalidArgument):
        load_platform_config(
            write(
                tmp_path,
                '[platform]\nid="weibo"\nlisten="127.0.0.1:1"\npki_dir="p"\n'
                'trust_dir="t"\nstate_dir="s"\ngateway="127.0.0.1:2"\nerror_rate=2\n',
            )
        )


def test_limits_defaults_are_positive() -> None:
    limits = Limits()
    assert limits.platform_call_timeout <= limits.default_call_timeout
    assert Limits.from_mapping({"max_batch_items": 10}).max_batch_items == 10


PLATFORM = """
[platform]
id = "weibo"
listen = "127.0.0.1:1"
pki_dir = "pki"
trust_dir = "trust"
state_dir = "state"
gateway = "127.0.0.1:2"
"""


def test_platform_retry_bounds_and_admin_socket_are_read(tmp_path: Path) -> None:
    config = load_platform_config(
        write(
            tmp_path,
            PLATFORM + "event_retry_limit = 4\nevent_retry_window = 90\ntrust_refresh = 30\n"
            'admin_socket = "run/admin.sock"\n',
        )
    )
    assert (config.event_retry_limit, config.event_retry_window) == (4, 90.0)
    assert config.trust_refresh == 30.0
    assert config.admin_socket == tmp_path / "run/admin.sock"  # relative to the config file


@pytest.mark.parametrize(
    "extra",
    [
        "event_retry_limit = 0\n",
        "event_retry_limit = 2.5\n",
        'event_retry_limit = "8"\n',
        "event_retry_limit = true\n",
        "event_retry_window = -1\n",
        'event_retry_window = "300"\n',
        "trust_refresh = 0\n",
        'admin_socket = ""\n',
    ],
)
def test_bad_platform_retry_bounds_are_refused(tmp_path: Path, extra: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_platform_config(write(tmp_path, PLATFORM + extra))
    assert e.value.reason == "BAD_CONFIG"
