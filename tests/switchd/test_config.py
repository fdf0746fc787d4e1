"""The shipped configuration is the documented default, and errors name their field."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from switchd.config import Config, ConfigError, load

SHIPPED = Path(__file__).parents[2] / "config" / "switchd.toml"


def test_shipped_file_is_exactly_the_defaults() -> None:
    assert msgspec.to_builtins(load(SHIPPED)) == msgspec.to_builtins(Config())


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[hsm]\npool_size = "four"\n', "$.hsm.pool_size"),
        ("[hsm]\nfoo = 1\n", "$.hsm"),
        ("[[listeners]]\nport = 70000\n", "$.listeners[0].port"),
        ('[routing.applications]\n"01" = "bankcard"\n', "$.routing.applications.01"),
        ('[security]\nkek = "xyz"\n', "$.security.kek"),
        ('[[issuers]]\nbin = "12"\nname = "x"\n', "$.issuers[0].bin"),
        ("[hsm]\nembedded = false\n", "$.hsm.addresses"),
        ('[transactions]\nacquirer_id = "0102ABCD"\n', "$.transactions.acquirer_id"),
        ('[transactions]\nacquirer_id = "010200000000"\n', "$.transactions.acquirer_id"),
        ('[transactions]\ncurrency = "CNY"\n', "$.transactions.currency"),
        # F62 cannot carry them: a 2-digit length, at most 512 bytes in all.
        (f'[parameters.values]\n"16" = "{"x" * 100}"\n', "$.parameters.values"),
        (
            f'[parameters.values]\n"16" = "{"x" * 99}"\n"17" = "{"x" * 99}"\n'
            f'"18" = "{"x" * 99}"\n"19" = "{"x" * 99}"\n"20" = "{"x" * 99}"\n',
            "$.parameters.values",
        ),
    ],
)
def test_errors_name_the_field(tmp_path: Path, text: str, path: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(
        ConfigError, match=path.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]")
    ):
        load(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml")
