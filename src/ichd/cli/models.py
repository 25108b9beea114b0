"""``ichd models list`` / ``ichd models info NAME``: the registered architectures and the bundled models."""

from __future__ import annotations

import json

import typer


def _bundled_module():  # the bundled-model catalogue (optional: absent in a bare checkout)
    import importlib

    try:
        return importlib.import_module("ichd.models.bundled")
    except ModuleNotFoundError as e:
        if e.name != "ichd.models.bundled":
            raise
        return None


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to ``app``."""
    models_app = typer.Typer(help="List and describe model architectures and bundled (trained) models.",
                             no_args_is_help=True)

    @models_app.command("list")
    def list_cmd(
        family: str | None = typer.Option(None, "--family",
                                          help="Only architectures of this family (slice, sequence)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List registered architectures (create_model names) and bundled trained models."""
        from ichd.models import list_models, model_info

        archs = [model_info(n) for n in list_models(family)]
        bundled_mod = _bundled_module()
        bundled = [b.info() for b in bundled_mod.list_bundled()] if bundled_mod is not None else []
        if as_json:
            typer.echo(json.dumps({"architectures": archs, "bundled": bundled}, indent=2))
            return
        typer.echo("Architectures (ichd.models.create_model):")
        width = max((len(a["name"]) for a in archs), default=4)
        for a in archs:
            mark = " [pretrained offline]" if a["pretrained_available"] else ""
            typer.echo(f"  {a['name']:<{width}}  {a['family']:<8}  {a['description']}{mark}")
        if bundled:
            typer.echo("Bundled trained models:")
            for b in bundled:
                typer.echo(f"  {b.get('name')}  {b.get('version', '')}  {b.get('description', '')}")

    @models_app.command("info")
    def info_cmd(name: str = typer.Argument(..., help="Architecture name (see `ichd models list`) or bundled "
                                                      "model name.")) -> None:
        """Describe one architecture (defaults, Grad-CAM layer, embedding size) or one bundled model (JSON)."""
        from ichd.errors import ModelError
        from ichd.models import create_model, list_models, model_info

        if name in list_models():
            info = model_info(name)
            model = create_model(name, pretrained=False)
            info["default_cfg"] = dict(model.default_cfg)
            info["parameters"] = int(sum(p.numel() for p in model.parameters()))
            typer.echo(json.dumps(info, indent=2))
            return
        bundled_mod = _bundled_module()
        if bundled_mod is not None:
            try:
                typer.echo(json.dumps(bundled_mod.get_bundled(name).info(), indent=2, default=str))
                return
            except ModelError:
                pass
        model_info(name)  # raises ModelError with a "did you mean" over the architectures
        raise ModelError(f"unknown model {name!r}")

    app.add_typer(models_app, name="models")
