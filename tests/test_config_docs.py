"""docs/config.md is generated from the config's docstrings and kept up to date."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gen_config", ROOT / "docs" / "gen_config.py")
gen_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_config)


def test_config_md_is_up_to_date():
    assert (ROOT / "docs" / "config.md").read_text() == gen_config.render(), (
        f"docs/config.md is stale: run `{gen_config.COMMAND}` and commit the result"
    )


@dataclasses.dataclass(frozen=True)
class _Section:
    """A section.

    Prose that names no field: it goes above the table.

    documented_first: a field, with its doc
      on two lines.
    declared_first: documented second.

    Prose after the fields.
    """

    declared_first: int = 0
    documented_first: int = 1


def test_parses_field_docs_in_field_order():
    intro, docs = gen_config.field_docs(_Section)
    assert intro == (
        "A section.\n\nProse that names no field: it goes above the table.\n\n"
        "Prose after the fields."
    )
    assert docs == {
        "declared_first": "documented second.",
        "documented_first": "a field, with its doc on two lines.",
    }


def test_a_field_missing_from_the_docstring_raises():
    @dataclasses.dataclass(frozen=True)
    class Section:
        """A section.

        documented: a field.
        """

        documented: int = 0
        forgotten: int = 0

    @dataclasses.dataclass(frozen=True)
    class Config:
        section: Section = dataclasses.field(default_factory=Section)

    with pytest.raises(gen_config.ConfigDocError, match="forgotten"):
        gen_config.render(Config, choices={}, positive=set())


def test_a_documented_name_that_is_no_field_raises():
    @dataclasses.dataclass(frozen=True)
    class Section:
        """A section.

        field: a field.
        renamed_away: documented, but no longer a field.
        """

        field: int = 0

    with pytest.raises(gen_config.ConfigDocError, match="renamed_away"):
        gen_config.field_docs(Section)


def test_an_unindented_continuation_raises():
    @dataclasses.dataclass(frozen=True)
    class Section:
        """A section.

        field: a doc that goes on
        at the margin.
        """

        field: int = 0

    with pytest.raises(gen_config.ConfigDocError, match="indent the continuation"):
        gen_config.field_docs(Section)


def test_choices_or_positive_of_a_missing_key_raise():
    @dataclasses.dataclass(frozen=True)
    class Config:
        section: _Section = dataclasses.field(default_factory=_Section)

    with pytest.raises(gen_config.ConfigDocError, match="section.nope"):
        gen_config.render(Config, choices={}, positive={"section.nope"})
