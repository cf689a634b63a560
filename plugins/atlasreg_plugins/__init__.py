"""First-party atlasreg plugins, installed as ``atlasreg_plugins`` and registered through the same
``atlasreg.plugins`` entry-point group a third-party plugin uses."""
