"""Parsing of flags, environment variables and runtime settings (pure)."""

from __future__ import annotations

import random

import pytest

from oaksend.sandbox.config import Config, Latency, Limit, load_config, parse_latency, parse_limits
from oaksend.sandbox.exceptions import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20", Latency("fixed", 20)),
        (15, Latency("fixed", 15)),
        ("uniform:10,50", Latency("uniform", 10, 50)),
        ("normal:30,10", Latency("normal", 30, 10)),
        ("exp:20", Latency("exp", 20)),
        ("fixed:5", Latency("fixed", 5)),
    ],
)
def test_latency_specs(text: object, expected: Latency) -> None:
    assert parse_latency(text) == expected
    assert parse_latency(str(expected)) == expected


@pytest.mark.parametrize("text", ["-1", "uniform:50,10", "uniform:10", "normal:1,-2", "gamma:2", "abc", "exp:1,2"])
def test_bad_latency_specs(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_latency(text)


@pytest.mark.parametrize(
    ("spec", "low_ms", "high_ms"),
    [("20", 20, 20), ("uniform:10,50", 10, 50), ("normal:30,10", 0, 200), ("exp:20", 0, 1000)],
)
def test_latency_samples_are_in_seconds(spec: str, low_ms: float, high_ms: float) -> None:
    rng = random.Random(1)
    samples = [parse_latency(spec).sample_s(rng) for _ in range(200)]
    assert all(low_ms / 1000 <= s <= high_ms / 1000 for s in samples)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("SN1=5:1,SN2=20:2", {"SN1": Limit(5, 1), "SN2": Limit(20, 2)}),
        (["SN1=0.5", "SN2=3:4,SN3=1"], {"SN1": Limit(0.5), "SN2": Limit(3, 4), "SN3": Limit(1)}),
        ({"SN1": "2:3", "SN2": 7}, {"SN1": Limit(2, 3), "SN2": Limit(7)}),
        ("", {}),
        (None, {}),
    ],
)
def test_limits(value: object, expected: dict[str, Limit]) -> None:
    assert parse_limits(value) == expected


@pytest.mark.parametrize("value", ["SN1", "=5", "SN1=0", "SN1=5:0", "SN1=x", "SN1=5:1.5"])
def test_bad_limits(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_limits(value)


def test_precedence_flag_then_env_then_default() -> None:
    env = {"SANDBOX_P_503": "0.25", "SANDBOX_SEED": "9", "SANDBOX_API_KEY": "", "NEWOAKS_API_KEY": "nk"}
    config = load_config(["--seed", "3"], env)
    # NEWOAKS_API_KEY is oaksend's (perhaps a real key): the sandbox never takes it as its own.
    assert (config.seed, config.p_503, config.api_key, config.port) == (3, 0.25, "sandbox-key", 8099)
    assert load_config([], {"SANDBOX_API_KEY": "env"}).api_key == "env"
    assert load_config(["--api-key", "flag"], {"SANDBOX_API_KEY": "env", "NEWOAKS_API_KEY": "nk"}).api_key == "flag"
    assert load_config([], {}).api_key == "sandbox-key"


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SANDBOX_P_429"):
        load_config([], {"SANDBOX_P_429": "often"})


def test_runtime_update_accepts_flag_spellings() -> None:
    config = Config().updated({"--p-503": "0.5", "P_500": 0.1, "SANDBOX_HANG_S": "2", "limit": "SN=1:2"})
    assert (config.p_503, config.p_500, config.hang_s, dict(config.limits)) == (0.5, 0.1, 2.0, {"SN": Limit(1, 2)})


def test_api_key_is_kept_out_of_repr_and_public_view() -> None:
    config = Config(api_key="very-secret")
    assert "very-secret" not in repr(config)
    assert "very-secret" not in str(config.public_dict())
